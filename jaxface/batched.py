"""Batch-minor ("vertex-major") face formation and sampled rendering for the fitting loop.

The same formulas as `formation.form_face` + `render.interpolate` + the photometric loss,
written for a whole batch at once with the batch as the LAST axis and one array per
coordinate: a quantity is f32[V, B] (x, y and z separate) instead of f32[B, V, 3].
On XLA:CPU this layout is several times faster for the fitting step (measured in
`benchmarks/accuracy.py`): every mesh gather or scatter then moves one contiguous
B-float row per index (B = 16 is one AVX-512 vector), whereas [B, V, 3] gathers move
3-float rows and wider [V, 3, B] rows fall off XLA's fast gather path.

Pixels: at each z-buffer refresh `pixel_samples` lists up to K pixels of the loss region
per image (`Samples`); every step then interpolates only those, with their triangle ids
fixed (the renderer's gradient path, `render.interpolate`). Flat vertex ids v * B + b
address the per-image tables.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.losses import PHOTO_EPS
from jaxface.formation import _A, _C, AMBIENT_OFFSET
from jaxface.model.face_model import FaceModel
from jaxface.render.rasterize import NEAR, Fragments, perspective_barycentrics


class Faces(NamedTuple):
    """Formation of a batch, batch minor. Tuples hold one f32[V, B] array per component.

    albedo: (r, g, b)      0-1
    colors: (r, g, b)      lit vertex colours (not clipped)
    screen: (x, y, 1/z)    column, top-down row, inverse camera depth (0 behind the camera)
    uv: (u, v)             projected image coordinates, v up (landmarks)
    """

    albedo: tuple
    colors: tuple
    screen: tuple
    uv: tuple


def linear_vm(mean, basis, coeffs):
    """mean f32[V, 3] + basis f32[V, 3, K] @ coeffs f32[B, K], as three f32[V, B]."""
    num = mean.shape[0]
    out = (basis.reshape(num * 3, -1) @ coeffs.T).reshape(num, 3, -1) + mean[:, :, None]
    return out[:, 0], out[:, 1], out[:, 2]


def vertex_normals_vm(pos, tris, point_buf):
    """Unit vertex normals (three f32[V, B]) of shapes pos = (x, y, z), each f32[V, B].

    Same formula as `formation.vertex_normals`: face normal normalize((v1 - v2) x (v2 - v3)),
    summed over the triangles of `point_buf` (padding id T -> zero normal), normalized.
    """
    corner = [[p[tris[:, k]] for p in pos] for k in range(3)]  # [corner][coord] f32[T, B]
    a = [corner[0][i] - corner[1][i] for i in range(3)]
    b = [corner[1][i] - corner[2][i] for i in range(3)]
    cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    face = _materialize(_normalize(cross))
    zero = jnp.zeros((1, face[0].shape[1]), face[0].dtype)
    face = [jnp.concatenate([f, zero]) for f in face]
    summed = tuple(sum(f[point_buf[:, j]] for j in range(point_buf.shape[1])) for f in face)
    return _normalize(summed)


def _materialize(tree):
    """Identity that makes XLA keep `tree` in memory: a conditional's result cannot be fused.

    Without it XLA:CPU fuses cheap elementwise producers into each gather that reads them
    and recomputes them per gathered element, reading their inputs at random (3x slower).
    The predicate is true for any input (NaN included) but not a compile-time constant.
    """
    leaf = jax.tree.leaves(tree)[0]
    keep = ~(leaf.reshape(-1)[0] > jnp.inf)
    return jax.lax.cond(keep, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t), tree)


def _normalize(vec, eps=1e-12):
    # torch.nn.functional.normalize: x / max(|x|, eps), with a safe gradient at 0.
    sq = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2]
    ok = sq > eps * eps
    inv = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, sq, 1.0)), 1.0 / eps)
    return tuple(c * inv for c in vec)


def _rotate(vec, rot):
    # rot f32[B, 3, 3]: out_i = sum_j R_ij vec_j, broadcast over the vertex axis.
    return tuple(sum(rot[:, i, j] * vec[j] for j in range(3)) for i in range(3))


def form_faces_vm(model: FaceModel, coeffs, rot, camera: Camera = Camera()) -> Faces:
    """`formation.form_face` for a batch, batch minor.

    coeffs: `Coeffs` with fields f32[B, n]; rot: f32[B, 3, 3] (`formation.rotation_matrix`).
    """
    pos = linear_vm(model.mean_shape, model.id_base, coeffs.id)
    pos = tuple(p + e for p, e in zip(pos, linear_vm(jnp.zeros_like(model.mean_shape), model.exp_base, coeffs.exp)))
    albedo = tuple(c / 255.0 for c in linear_vm(model.mean_tex, model.tex_base, coeffs.tex))
    normals = _rotate(vertex_normals_vm(pos, model.tris, model.point_buf), rot)
    x, y, z = (p + t for p, t in zip(_rotate(pos, rot), coeffs.trans.T))
    depth = camera.distance - z
    u = camera.focal * x / depth + camera.center
    v = camera.focal * y / depth + camera.center
    in_front = depth > NEAR
    inv_depth = jnp.where(in_front, 1.0 / jnp.where(in_front, depth, 1.0), 0.0)
    screen = (u, camera.image_size - 1 - v, inv_depth)
    return Faces(albedo, _shade_vm(albedo, normals, coeffs.gamma), screen, (u, v))


def _shade_vm(albedo, normals, gamma):
    """albedo * (Y(n) . gamma_c) with the ambient offset; gamma f32[B, 27]."""
    x, y, z = normals
    a0c0, a1c1, a2c2 = _A[0] * _C[0], _A[1] * _C[1], _A[2] * _C[2]
    terms = [
        None,  # the constant term, added below
        -a1c1 * y,
        a1c1 * z,
        -a1c1 * x,
        a2c2 * x * y,
        -a2c2 * y * z,
        0.5 * a2c2 / np.sqrt(3.0) * (3 * z * z - 1),
        -a2c2 * x * z,
        0.5 * a2c2 * (x * x - y * y),
    ]
    g = gamma.reshape(-1, 3, 9)
    out = []
    for c in range(3):
        light = a0c0 * (g[:, c, 0] + AMBIENT_OFFSET) + sum(terms[k] * g[:, c, k] for k in range(1, 9))
        out.append(albedo[c] * light)
    return tuple(out)


class Samples(NamedTuple):
    """Up to K pixel samples per image of a batch, fixed at a z-buffer refresh (batch minor).

    corners: i32[3, K, B]   flat ids v * B + b of the corners of each sample's triangle
    px, py: f32[K, B]       sample position (column, top-down row)
    target: f32[3, K, B]    the image's colour there (r, g, b)
    weight: f32[K, B]       1 / (samples of that image) on real samples, 0 on padding
    """

    corners: jnp.ndarray
    px: jnp.ndarray
    py: jnp.ndarray
    target: jnp.ndarray
    weight: jnp.ndarray


def pixel_samples(fragments: Fragments, tris, keep, image, size: int):
    """Samples of ONE image (batch first; see `batch_samples`): the `keep` pixels.

    fragments: z-buffer of the image; keep: bool[H, W] pixels to sample (a subset of the
    covered ones); image: f32[H, W, 3]. When more than `size` pixels are kept, `size` of
    them are taken evenly in raster order (the loss is a mean, so this is an unbiased
    thinning). Returns (corners i32[K, 3] vertex ids, px, py, target f32[K, 3], weight)
    with K = size.
    """
    height, width = fragments.tri_id.shape
    flat = keep.reshape(-1)
    count = jnp.sum(flat)
    rank = jnp.cumsum(flat) - 1.0
    step = jnp.minimum(1.0, size / jnp.maximum(count, 1))
    chosen = flat & (jnp.floor((rank + 1) * step) > jnp.floor(rank * step))
    (pix,) = jnp.nonzero(chosen, size=size, fill_value=0)
    real = jnp.arange(size) < jnp.sum(chosen)
    tri = jnp.maximum(fragments.tri_id.reshape(-1)[pix], 0)
    weight = real / jnp.maximum(jnp.sum(real), 1)
    target = image.reshape(-1, 3)[pix]
    return tris[tri], (pix % width).astype(jnp.float32), (pix // width).astype(jnp.float32), target, weight


def batch_samples(corners, px, py, target, weight) -> Samples:
    """Stack `pixel_samples` outputs of B images (leading B axes) into batch-minor `Samples`."""
    batch = corners.shape[0]
    flat = jnp.moveaxis(corners, (0, 2), (2, 0)) * batch + jnp.arange(batch, dtype=corners.dtype)
    return Samples(flat, px.T, py.T, jnp.moveaxis(target, (0, 2), (2, 0)), weight.T)


def interpolate_samples(channels, screen, samples: Samples):
    """Perspective-correct interpolation at the samples: one f32[K, B] per channel.

    channels: tuple of f32[V, B] vertex values; screen: (x, y, 1/z) each f32[V, B].
    """
    channels, screen = _materialize((channels, screen))
    gather = lambda table, k: table.reshape(-1)[samples.corners[k]]
    corners = tuple(tuple(gather(s, k) for k in range(3)) for s in screen)
    bary, _ = perspective_barycentrics(corners, samples.px, samples.py, samples.weight > 0)
    return tuple(sum(bary[k] * gather(c, k) for k in range(3)) for c in channels)


def photometric_vm(colors, screen, samples: Samples, eps: float = PHOTO_EPS):
    """Per-image photometric loss f32[B] (losses.photometric_loss on the samples)."""
    rendered = interpolate_samples(colors, screen, samples)
    sq = sum((jnp.clip(r, 0.0, 1.0) - samples.target[c]) ** 2 for c, r in enumerate(rendered))
    return jnp.sum(jnp.sqrt(eps + sq) * samples.weight, axis=0)


def albedo_regularizer_vm(albedo, skin_mask):
    """Per-image `losses.albedo_regularizer` f32[B] of albedo (three f32[V, B])."""
    m = skin_mask[:, None]
    total = jnp.sum(skin_mask)
    out = 0.0
    for a in albedo:
        mean = jnp.sum(a * m, axis=0) / total
        out = out + jnp.sum(((a - mean) * m) ** 2, axis=0)
    return out / total
