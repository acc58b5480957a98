"""Shared fixtures: the synthetic model (generated once per machine, cached) and a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"

@pytest.fixture(scope="session")
def synthetic_dir():
    from jaxface.model.synthetic import synthetic_model_dir

    return synthetic_model_dir(seed=0, cache_dir=os.environ.get("JAXFACE_CACHE"))

@pytest.fixture(scope="session")
def synthetic_model(synthetic_dir):
    # The same object (static name included) that the demo and CLI load, so jit caches are shared.
    from jaxface.model.synthetic import synthetic_face_model

    return synthetic_face_model(seed=0, cache_dir=os.environ.get("JAXFACE_CACHE"))

def grid_mesh(n: int = 6):
    """A small n x n grid of vertices, 2(n-1)^2 triangles, and its point_buf (padded with T)."""
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    vid = ii * n + jj
    a, b, c, d = vid[:-1, :-1], vid[:-1, 1:], vid[1:, :-1], vid[1:, 1:]
    tris = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    t = len(tris)
    buf = np.full((n * n, 8), t, np.int32)
    fill = np.zeros(n * n, int)
    for k, tri in enumerate(tris):
        for v in tri:
            buf[v, fill[v]] = k
            fill[v] += 1
    return tris.astype(np.int32), buf

@pytest.fixture(scope="session")
def tiny_model():
    """A random FaceModel on a 6x6 grid (36 vertices) for fast gradient checks."""
    import jax.numpy as jnp

    from jaxface.model import FaceModel

    rng = np.random.default_rng(0)
    tris, buf = grid_mesh(6)
    v = 36
    ii, jj = np.meshgrid(np.linspace(-0.8, 0.8, 6), np.linspace(-0.8, 0.8, 6), indexing="ij")
    mean = np.stack([jj.ravel(), -ii.ravel(), 0.3 - 0.3 * (ii.ravel() ** 2 + jj.ravel() ** 2)], -1)
    f32 = np.float32
    return FaceModel(
        mean_shape=jnp.asarray(mean, f32),
        id_base=jnp.asarray(rng.normal(size=(v, 3, 80)) * 0.01, f32),
        exp_base=jnp.asarray(rng.normal(size=(v, 3, 64)) * 0.01, f32),
        mean_tex=jnp.asarray(rng.uniform(80, 200, size=(v, 3)), f32),
        tex_base=jnp.asarray(rng.normal(size=(v, 3, 80)) * 5, f32),
        tris=jnp.asarray(tris),
        point_buf=jnp.asarray(buf),
        keypoints=jnp.asarray(rng.integers(0, v, 68).astype(np.int32)),
        front_mask_idx=jnp.arange(v, dtype=jnp.int32),
        skin_mask=jnp.ones(v, jnp.float32),
        name="tiny-test",
        synthetic=True,
    )


def normals_reference(shape, tris, point_buf):
    """Unit vertex normals f[V, 3] of ONE shape by the references' formula, written plainly
    (autodiff gives its gradient): torch-style normalize(cross(v1 - v2, v2 - v3)) per
    triangle, summed over point_buf (padding id T = a zero normal), normalized."""
    import jax.numpy as jnp

    def normalize(x):
        sq = jnp.sum(x * x, axis=-1, keepdims=True)
        return x * jnp.where(sq > 1e-24, 1.0 / jnp.sqrt(jnp.where(sq > 1e-24, sq, 1.0)), 1e12)

    v1, v2, v3 = shape[tris[:, 0]], shape[tris[:, 1]], shape[tris[:, 2]]
    face = normalize(jnp.cross(v1 - v2, v2 - v3))
    return normalize(jnp.concatenate([face, jnp.zeros((1, 3), face.dtype)])[point_buf].sum(axis=1))
