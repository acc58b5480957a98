"""Data parallelism: a 1-D `Mesh` over the devices with axis "data".

Batches are sharded along it; parameters, optimizer state and the face model are
replicated. The step is one global-view program (GSPMD inserts the gradient and
BatchNorm-statistics all-reduces), so 1 CPU, 1 GPU or 8 GPUs run the same code and agree
up to reduction order.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """1-D mesh with axis "data" over `devices` (default: all of the default backend's)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} does not split over the {mesh.size} devices; use a multiple "
                         f"of {mesh.size} (or fewer devices, e.g. CUDA_VISIBLE_DEVICES)")
