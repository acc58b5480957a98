"""Face formation speed: jitted+vmapped JAX vs the same computation in numpy, one process.

Prints one JSON line: ms/face at batch 1 and 64 on the full-size (35,709-vertex) model for
shape, albedo, normals, pose, SH lighting and projection; compile time separately.
Target: jitted batch 64 at least 3x faster per face than numpy.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from common import alternate, emit, time_compile
from jaxface import Camera, Coeffs, formation
from jaxface.formation.face import SH_A, SH_C
from jaxface.model.synthetic import synthetic_face_model


def numpy_sh(n):
    a, c = SH_A, SH_C
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    k0, k1, k2 = a[0] * c[0], a[1] * c[1], a[2] * c[2]
    return np.stack([np.full_like(x, k0), -k1 * y, k1 * z, -k1 * x, k2 * x * y, -k2 * y * z,
                     0.5 * k2 / np.sqrt(3.0) * (3 * z * z - 1), -k2 * x * z, 0.5 * k2 * (x * x - y * y)], -1)


def numpy_form(m, vec, cam=Camera()):
    """Batched numpy float32 face formation (SPEC formulas), vec f32[B, 257]."""
    c = Coeffs.from_vector(vec)
    v = m["mean_shape"].shape[0]
    shape = m["mean_shape"].reshape(1, -1) + c.id @ m["id_t"] + c.exp @ m["exp_t"]
    shape = shape.reshape(-1, v, 3)
    albedo = (m["mean_tex"].reshape(1, -1) + c.tex @ m["tex_t"]).reshape(-1, v, 3) / 255.0
    x, y, z = c.angle[:, 0], c.angle[:, 1], c.angle[:, 2]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([one, zero, zero, zero, np.cos(x), -np.sin(x), zero, np.sin(x), np.cos(x)], -1).reshape(-1, 3, 3)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], -1).reshape(-1, 3, 3)
    rz = np.stack([np.cos(z), -np.sin(z), zero, np.sin(z), np.cos(z), zero, zero, zero, one], -1).reshape(-1, 3, 3)
    rot = rz @ ry @ rx
    posed = shape @ rot.transpose(0, 2, 1) + c.trans[:, None]
    t = m["tris"]
    fn = np.cross(shape[:, t[:, 0]] - shape[:, t[:, 1]], shape[:, t[:, 1]] - shape[:, t[:, 2]])
    fn /= np.maximum(np.linalg.norm(fn, axis=-1, keepdims=True), 1e-12)
    fn = np.concatenate([fn, np.zeros_like(fn[:, :1])], axis=1)
    vn = fn[:, m["point_buf"]].sum(2)
    vn /= np.maximum(np.linalg.norm(vn, axis=-1, keepdims=True), 1e-12)
    vn = vn @ rot.transpose(0, 2, 1)
    ysh = numpy_sh(vn)
    g = c.gamma.reshape(-1, 3, 9).copy()
    g[:, :, 0] += 0.8
    colors = albedo * np.einsum("bvk,bck->bvc", ysh, g)
    d = cam.distance - posed[..., 2]
    uv = cam.focal * posed[..., :2] / d[..., None] + cam.center
    return colors, uv


@jax.jit
def colors_uv(model, coeffs):
    face = formation.form_faces(model, coeffs, Camera())
    return face.colors, face.uv


def numpy_model(model) -> dict:
    """The arrays `numpy_form` reads, as numpy (bases transposed for row-vector products)."""
    return {
        "mean_shape": np.asarray(model.mean_shape), "mean_tex": np.asarray(model.mean_tex),
        "id_t": np.asarray(model.id_base).reshape(-1, 80).T.copy(), "exp_t": np.asarray(model.exp_base).reshape(-1, 64).T.copy(),
        "tex_t": np.asarray(model.tex_base).reshape(-1, 80).T.copy(), "tris": np.asarray(model.tris),
        "point_buf": np.asarray(model.point_buf),
    }


def formation_speed(model, batch: int, repeats: int = 7, npm: dict | None = None, numpy_batch: int | None = None) -> dict:
    """ms/face of jitted `form_faces` (lit colours and projections) at `batch`, and of the numpy
    baseline at `numpy_batch` (default: the same batch; a smaller one keeps a large batch's
    reference cheap), alternated in this process; compile time apart."""
    npm = numpy_model(model) if npm is None else npm
    numpy_batch = batch if numpy_batch is None else numpy_batch
    rng = np.random.default_rng(0)
    vec = (rng.normal(size=(batch, 257)) * 0.1).astype(np.float32)
    coeffs = jax.tree.map(jax.numpy.asarray, Coeffs.from_vector(vec))
    # Same outputs as the numpy baseline (lit colours and projections), so XLA is not
    # charged for writing the six other Face arrays numpy never builds.
    fn = lambda: colors_uv(model, coeffs)  # noqa: E731
    compile_s = time_compile(fn)
    t = alternate({"jax": fn, "numpy": lambda: numpy_form(npm, vec[:numpy_batch])}, repeats=repeats)
    jax_ms, numpy_ms = 1e3 * t["jax"] / batch, 1e3 * t["numpy"] / numpy_batch
    return {
        "compile_s": round(compile_s, 3),
        "jax_ms_per_face": round(jax_ms, 4),
        "numpy_ms_per_face": round(numpy_ms, 3),
        "numpy_batch": numpy_batch,
        "speedup_vs_numpy": round(numpy_ms / jax_ms, 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    model = synthetic_face_model()
    npm = numpy_model(model)
    out = {"vertices": model.num_vertices, "triangles": model.num_triangles, "model": model.label}
    for batch in (1, 64):
        out[f"batch{batch}"] = formation_speed(model, batch, args.repeats, npm)
    out["target"] = "batch64 speedup_vs_numpy >= 3"
    emit("synthesis", out)


if __name__ == "__main__":
    main()
