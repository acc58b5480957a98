"""Data parallelism: a 1-D `Mesh` over the devices with axis "data".

Batches are sharded along it; parameters, optimizer state and the face model are
replicated. The step is one global-view program (GSPMD inserts the gradient and
BatchNorm-statistics all-reduces), so 1 CPU, 1 GPU or 8 GPUs run the same code and agree
up to reduction order. With several processes (`jaxface.train.multihost`) the mesh spans
every process's devices; each process places only its rows of a batch (`local_rows`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """1-D mesh with axis "data" over `devices` (default: all of the default backend's, of
    every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """A copy of `tree` on every device of `mesh`. With several processes each must pass the
    same values (`multihost.check_same` checks the settings they come from once)."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # device_put would compare every leaf across processes: one collective per leaf.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} does not split over the {mesh.size} devices; use a multiple "
                         f"of {mesh.size} (or fewer devices, e.g. CUDA_VISIBLE_DEVICES)")


def local_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a global batch of `batch_size` that this process's devices hold under
    `sharding` (all of them on one process). They are contiguous on a 1-D data mesh."""
    spans = sorted(index[0].indices(batch_size)[:2]
                   for index in sharding.addressable_devices_indices_map((batch_size,)).values())
    start, stop = spans[0]
    for a, b in spans[1:]:
        if a > stop:
            raise ValueError(f"this process's rows of the batch are not contiguous ({spans}); order the mesh's "
                             "devices by process")
        stop = max(stop, b)
    return slice(start, stop)


def to_host(tree):
    """numpy copies of a pytree of arrays, on every process: a replicated array is read from a
    local copy, one sharded over other processes' devices is gathered from all of them."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)
