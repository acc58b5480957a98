"""Test meshes for the renderer and an independent numpy reference rasterizer.

`face_model()` puts a face-like height field on the real BFM09 front topology
(70,789 triangles from BFM/facemodel_info.mat): a Tutte embedding of the mesh with its
outer boundary on an ellipse (all triangles keep their orientation), radially warped so
outer triangles are larger, lifted into a dome with a nose. Bases are zero: rendering
tests need realistic triangle counts and sizes, not a real identity space.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import scipy.io as sio

from jaxface.model.face_model import FaceModel
from jaxface.model.synthetic import tutte_layout
from jaxface.paths import index_file
from jaxface.render.barycentric import NEAR
from jaxface.render.rasterize import MIN_AREA2


@functools.lru_cache(maxsize=1)
def face_topology():
    """(tris i32[T, 3], point_buf i32[V, 8], keypoints i32[68], skin f32[V]) zero-based."""
    info = sio.loadmat(index_file("facemodel_info.mat"))
    tris = info["tri"].astype(np.int32) - 1
    return tris, info["point_buf"].astype(np.int32) - 1, info["keypoints"].ravel().astype(np.int32) - 1, (
        info["skinmask"].ravel().astype(np.float32)
    )


@functools.lru_cache(maxsize=1)
def face_model() -> FaceModel:
    """Face-sized front-facing mesh on the real topology (about 150 x 190 px at 224x224)."""
    tris, point_buf, keypoints, skin = face_topology()
    disk = tutte_layout(tris.astype(np.int64), len(point_buf), aspect=1.0)  # unit disk
    r = np.linalg.norm(disk, axis=1, keepdims=True)
    disk = disk * (0.35 + 0.65 * r**2)  # larger triangles towards the rim, as on real faces
    r2 = (disk**2).sum(1)
    nose = 0.35 * np.exp(-((disk[:, 0] / 0.18) ** 2 + ((disk[:, 1] + 0.05) / 0.3) ** 2))
    shape = np.stack([0.74 * disk[:, 0], 0.93 * disk[:, 1], 0.8 * (1 - r2) + nose - 0.5], 1)
    tex = 255 * np.stack(
        [0.75 + 0.15 * np.sin(9 * disk[:, 0]), 0.55 + 0.1 * np.cos(7 * disk[:, 1]), 0.45 + 0.1 * disk[:, 0] * disk[:, 1]], 1
    )
    nv = len(shape)
    return FaceModel(
        mean_shape=jnp.asarray(shape, jnp.float32),
        id_base=jnp.zeros((nv, 3, 80), jnp.float32),
        exp_base=jnp.zeros((nv, 3, 64), jnp.float32),
        mean_tex=jnp.asarray(tex, jnp.float32),
        tex_base=jnp.zeros((nv, 3, 80), jnp.float32),
        tris=jnp.asarray(tris),
        point_buf=jnp.asarray(point_buf),
        keypoints=jnp.asarray(keypoints),
        front_mask_idx=jnp.arange(nv, dtype=jnp.int32),
        skin_mask=jnp.asarray(skin),
        name="test height field",
        synthetic=True,
    )


def random_mesh(seed: int, num_tris: int, height: int, width: int):
    """A soup of overlapping triangles of all sizes: (f32[3T, 3], i32[T, 3], culled bool[T]).

    Mixes tiny, medium and image-sized triangles, some reaching off-screen, some with a
    vertex behind the camera or a repeated vertex (`culled`: must never be drawn), and
    some collinear slivers (float32 rounding leaves them a tiny area either way).
    """
    rng = np.random.default_rng(seed)
    size = np.exp(rng.uniform(np.log(0.5), np.log(1.2 * max(height, width)), num_tris))
    centre = rng.uniform([-0.2 * width, -0.2 * height], [1.2 * width, 1.2 * height], (num_tris, 2))
    xy = centre[:, None, :] + size[:, None, None] * rng.uniform(-0.7, 0.7, (num_tris, 3, 2))
    depth = rng.uniform(2.0, 10.0, (num_tris, 1)) + rng.uniform(-1.0, 1.0, (num_tris, 3))
    behind = rng.random(num_tris) < 0.04
    depth[behind, 0] = rng.uniform(-1.0, 0.0, behind.sum())
    degenerate = np.flatnonzero(rng.random(num_tris) < 0.04)
    xy[degenerate[::2], 2] = xy[degenerate[::2], 0]
    xy[degenerate[1::2], 2] = 0.5 * (xy[degenerate[1::2], 0] + xy[degenerate[1::2], 1])
    verts = np.concatenate([xy, depth[..., None]], axis=2).reshape(-1, 3).astype(np.float32)
    culled = behind.copy()
    culled[degenerate[::2]] = True
    return verts, np.arange(3 * num_tris, dtype=np.int32).reshape(num_tris, 3), culled


def reference_rasterize(verts, tris, height, width):
    """Simple float64 z-buffer: a Python loop over triangles, edge functions per bounding box.

    Same sampling (pixel (i, j) samples x=j, y=i), coverage (inside or on an edge), culling
    (vertex depth <= NEAR, |doubled area| < MIN_AREA2) and z-test (largest screen-linear
    inverse depth wins) as the jax rasterizer, but float64 depths instead of a quantized
    key: a later (higher id) triangle replaces only when nearer by more than 1e-9 relative,
    so equal depths (up to float64 rounding) keep the lower id.
    Returns (tri_id i64[H, W], bary f64[H, W, 3], inv_depth f64[H, W]).
    """
    v = np.asarray(verts, np.float64)[np.asarray(tris)]
    tri_id = np.full((height, width), -1)
    inv_depth = np.full((height, width), -np.inf)
    bary = np.zeros((height, width, 3))
    with np.errstate(invalid="ignore"):
        col0 = np.maximum(np.ceil(v[..., 0].min(1)), 0)
        col1 = np.minimum(np.floor(v[..., 0].max(1)), width - 1)
        row0 = np.maximum(np.ceil(v[..., 1].min(1)), 0)
        row1 = np.minimum(np.floor(v[..., 1].max(1)), height - 1)
    # Only triangles whose clipped bounding box holds a pixel centre can cover anything.
    for t in np.flatnonzero((col0 <= col1) & (row0 <= row1)):
        p0, p1, p2 = v[t]
        if not np.all(np.isfinite(v[t])) or min(p0[2], p1[2], p2[2]) <= NEAR:
            continue
        area2 = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (p1[1] - p0[1])
        if abs(area2) < MIN_AREA2:
            continue
        c0, c1, r0, r1 = int(col0[t]), int(col1[t]), int(row0[t]), int(row1[t])
        py, px = np.mgrid[r0 : r1 + 1, c0 : c1 + 1].astype(np.float64)
        # Edge function opposite vertex k: doubled signed area of (pixel, v_{k+1}, v_{k+2}).
        e = np.stack(
            [(a[0] - px) * (b[1] - py) - (b[0] - px) * (a[1] - py) for a, b in ((p1, p2), (p2, p0), (p0, p1))], -1
        )
        lam = e / area2
        inside = np.all(lam >= 0, axis=-1)
        w = lam @ (1.0 / v[t, :, 2])
        zone = inv_depth[r0 : r1 + 1, c0 : c1 + 1]
        win = inside & (w > zone * (1 + 1e-9))
        zone[win] = w[win]
        tri_id[r0 : r1 + 1, c0 : c1 + 1][win] = t
        persp = lam / v[t, :, 2] / w[..., None]
        bary[r0 : r1 + 1, c0 : c1 + 1][win] = persp[win]
    return tri_id, bary, np.where(tri_id >= 0, inv_depth, 0.0)


def face_screen(angle=(0.0, 0.0, 0.0), trans=(0.0, 0.0, 0.0), camera=None):
    """Screen vertices f32[V, 3] of the test face posed by (angle, trans) and i32[T, 3]."""
    from jaxface import Camera, Coeffs, form_face
    from jaxface.formation import screen_coords

    camera = camera or Camera()
    coeffs = Coeffs.zeros()._replace(angle=jnp.asarray(angle, jnp.float32), trans=jnp.asarray(trans, jnp.float32))
    face = form_face(face_model(), coeffs, camera)
    return np.asarray(screen_coords(face.uv, face.depth, camera)), np.asarray(face_model().tris)
