"""Renderer speed at 224x224 on the 70,789-triangle face topology; prints ONE JSON line.

ms/image at batch 1 and 16: compile time (first call) and steady state (median of
several alternated runs) for the forward pass (rasterize + colour interpolation) and
forward+backward (grad of a photometric loss w.r.t. vertex positions and colours), plus
a vectorized numpy rasterizer on the same mesh in the same process.

    .venv/bin/python benchmarks/render.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from render_fixtures import face_model  # noqa: E402  (test mesh on the real BFM09 topology)

from jaxface import Coeffs, form_faces  # noqa: E402
from jaxface.formation import screen_coords  # noqa: E402
from jaxface.render import render_mesh  # noqa: E402
from jaxface.render.barycentric import NEAR
from jaxface.render.rasterize import MIN_AREA2  # noqa: E402

SIZE = 224


def numpy_rasterize(verts, tris, height, width, tile=4):
    """Vectorized numpy z-buffer: a tile x tile footprint for all triangles, a loop for larger ones.

    Returns tri_id i64[H, W] (nearest wins; equal depth -> lower id), like the jax rasterizer.
    """
    v = np.asarray(verts, np.float64)[tris]  # [T, 3, 3]
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    drawn = (z.min(1) > NEAR) & (np.abs(area2) >= MIN_AREA2)
    c0 = np.ceil(np.clip(x.min(1), 0, width)).astype(np.int64)
    c1 = np.floor(np.clip(x.max(1), -1, width - 1)).astype(np.int64)
    r0 = np.ceil(np.clip(y.min(1), 0, height)).astype(np.int64)
    r1 = np.floor(np.clip(y.max(1), -1, height - 1)).astype(np.int64)
    drawn &= (c1 >= c0) & (r1 >= r0)
    big = drawn & ((c1 - c0 >= tile) | (r1 - r0 >= tile))

    def candidates(ids, px, py):
        # px, py: [N, P] pixel coordinates of the triangles ids [N].
        xr, yr = x[ids][:, None, :] - px[..., None], y[ids][:, None, :] - py[..., None]
        e = np.roll(xr, -1, -1) * np.roll(yr, -2, -1) - np.roll(xr, -2, -1) * np.roll(yr, -1, -1)
        lam = e / area2[ids][:, None, None]
        ok = np.all(lam >= 0, -1) & (px <= c1[ids][:, None]) & (py <= r1[ids][:, None])
        w = lam @ (1.0 / z[ids])[..., None]
        n = np.broadcast_to(ids[:, None], ok.shape)
        return (py * width + px)[ok], w[..., 0][ok], n[ok]

    small = np.flatnonzero(drawn & ~big)
    dy, dx = np.mgrid[:tile, :tile].reshape(2, -1)
    parts = [candidates(small, c0[small][:, None] + dx, r0[small][:, None] + dy)]
    for t in np.flatnonzero(big):
        py, px = np.mgrid[r0[t] : r1[t] + 1, c0[t] : c1[t] + 1].reshape(2, 1, -1)
        parts.append(candidates(np.array([t]), px, py))
    pix, w, ids = (np.concatenate(a) for a in zip(*parts))
    order = np.lexsort((ids, -w, pix))  # per pixel: nearest first, then lower id
    first = np.unique(pix[order], return_index=True)[1]
    tri_id = np.full(height * width, -1)
    tri_id[pix[order][first]] = ids[order][first]
    return tri_id.reshape(height, width)


def _time_ms(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return 1e3 * (time.perf_counter() - t0)


def meshes(model, batch: int):
    """(screen vertices f32[B, V, 3], colours f32[B, V, 3]) of `batch` posed faces at SIZE."""
    rng = np.random.default_rng(0)
    coeffs = Coeffs.zeros((batch,))._replace(
        angle=jnp.asarray(rng.normal(0, 0.15, (batch, 3)), jnp.float32),
        trans=jnp.asarray(rng.normal(0, 0.1, (batch, 3)), jnp.float32),
    )
    faces = form_faces(model, coeffs)
    return jax.vmap(screen_coords)(faces.uv, faces.depth), jnp.clip(faces.colors, 0, 1)


def render_speed(model, batches=(1, 16), repeats: int = 7) -> dict:
    """ms/image of the forward pass (rasterize + colour interpolation) and of forward+backward
    (grad of a photometric loss w.r.t. vertex positions and colours) at each batch: first
    call (compile) apart, then medians of alternated runs. Also returns the meshes."""
    tris = model.tris
    verts, colors = meshes(model, max(batches))
    target = jnp.full((max(batches), SIZE, SIZE, 3), 0.5, jnp.float32)

    def forward(v, c):
        return jax.vmap(lambda v, c: render_mesh(v, c, tris, SIZE, SIZE).image)(v, c)

    def loss(v, c, t):
        return jnp.mean((forward(v, c) - t) ** 2)

    fns = {"forward": jax.jit(forward), "backward": jax.jit(jax.grad(loss, argnums=(0, 1)))}
    args_for = {"forward": lambda b: (verts[:b], colors[:b]), "backward": lambda b: (verts[:b], colors[:b], target[:b])}
    result = {"size": SIZE, "triangles": int(tris.shape[0])}
    for b in batches:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args_for[name](b)))
            result[f"{name}_compile_s_b{b}"] = round(time.perf_counter() - t0, 2)
        steady = {name: [] for name in fns}
        for _ in range(repeats):  # alternate so background load hits both alike
            for name, fn in fns.items():
                steady[name].append(_time_ms(lambda: fn(*args_for[name](b))) / b)
        for name in fns:
            result[f"{name}_ms_per_image_b{b}"] = round(float(np.median(steady[name])), 3)
        result[f"backward_over_forward_b{b}"] = round(result[f"backward_ms_per_image_b{b}"] / result[f"forward_ms_per_image_b{b}"], 2)
    return result, (verts, colors)


def numpy_reference(model, verts, colors, repeats: int = 7) -> dict:
    """The numpy rasterizer on the first mesh: ms/image and its disagreement with the jax z-buffer."""
    tris = model.tris
    v0, t_np = np.asarray(verts[0]), np.asarray(tris)
    ref = numpy_rasterize(v0, t_np, SIZE, SIZE)
    mine = np.asarray(jax.jit(lambda v: render_mesh(v, colors[0], tris, SIZE, SIZE).fragments.tri_id)(verts[0]))
    numpy_ms = [_time_ms(lambda: numpy_rasterize(v0, t_np, SIZE, SIZE)) for _ in range(repeats)]
    return {"numpy_vs_jax_tri_id_mismatch_px": int((ref != mine).sum()), "numpy_rasterize_ms": round(float(np.median(numpy_ms)), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    model = face_model()
    result, (verts, colors) = render_speed(model, (1, 16), args.repeats)
    result["devices"] = str(jax.devices()[0].platform)
    result.update(numpy_reference(model, verts, colors, args.repeats))
    result["numpy_over_jax_forward_b16"] = round(result["numpy_rasterize_ms"] / result["forward_ms_per_image_b16"], 2)
    result["targets"] = "forward <= 15 ms/image at b16; backward <= 2x forward"
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)  # other jobs on the machine skew all times
    print(json.dumps(result))


if __name__ == "__main__":
    main()
