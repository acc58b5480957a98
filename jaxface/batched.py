"""Batch-minor ("vertex-major") face formation and sampled rendering for the fitting loop.

The same formulas as `formation.form_face` + `render.interpolate` + the photometric loss,
written for a whole batch at once with the batch as the LAST axis and one array per
coordinate: a quantity is f32[V, B] (x, y and z separate) instead of f32[B, V, 3].
On XLA:CPU every mesh gather then moves one contiguous B-float row per index (B = 16 is
one AVX-512 vector), whereas [B, V, 3] gathers move 3-float rows and wider [V, 3, B]
rows fall off XLA's fast gather path. Hand-written VJPs for the normals and the pixel
blend avoid scatter-adds and recomputation that autodiff would leave to XLA.

Vertices: only the `Region` the loss reads (the photometric region's vertices, their
one-ring and the keypoints; about 80% of the BFM front model), with the bases gathered
once per fit (`prepare`). The albedo prior is a quadratic form of the coefficients.

Pixels: at each z-buffer refresh `pixel_samples` lists up to K pixels of the loss region
per image (`Samples`); every step then interpolates only those, with their triangle ids
fixed (the renderer's gradient path, `render.interpolate`). Flat vertex ids b * P + v
address the per-image tables.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.losses import PHOTO_EPS
from jaxface.formation import AMBIENT_OFFSET, sh_terms
from jaxface.model.face_model import FaceModel
from jaxface.render.rasterize import NEAR, edge_functions


class Faces(NamedTuple):
    """Formation of a batch, batch minor. Tuples hold one f32[V, B] array per component.

    albedo: (r, g, b)      0-1
    normals: (x, y, z)     rotated unit normals
    colors: (r, g, b)      lit vertex colours (not clipped)
    screen: (x, y, 1/z)    column, top-down row, inverse camera depth (0 behind the camera)
    uv: (u, v)             projected image coordinates, v up (landmarks)
    """

    albedo: tuple
    normals: tuple
    colors: tuple
    screen: tuple
    uv: tuple


class Region(NamedTuple):
    """The part of the mesh the photometric stage reads (`photo_region`; static sizes).

    vertices: i32[P]       model vertex ids kept: every corner of a triangle that touches
                           the photometric region (the region's normals need them) and
                           the keypoints
    local: i32[V]          model vertex id -> row of `vertices` (P where not kept)
    tris: i32[N, 3]        the triangles touching the region, in local vertex ids
    point_buf: i32[P, Q]   each kept vertex's kept triangles (rows of `tris`), padded with N
    skin: i32[S]           model vertex ids of the skin (`albedo_prior`)
    """

    vertices: jnp.ndarray
    local: jnp.ndarray
    tris: jnp.ndarray
    point_buf: jnp.ndarray
    skin: jnp.ndarray


def photo_region(model: FaceModel) -> Region:
    """`Region` of a model: the region is `model.region_triangles()` (as the loss mask,
    `losses.region_mask`). Vertex normals are exact on the region's
    vertices (their whole one-ring is kept) and partial on the outer ring, where nothing
    reads them. Built with numpy from a concrete model (about 20% of the vertices and
    triangles of the BFM front model drop out); a traced model keeps the whole mesh."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(model)):
        ids = jnp.arange(model.num_vertices, dtype=jnp.int32)
        return Region(ids, ids, model.tris, model.point_buf, ids)
    tris, point_buf = np.asarray(model.tris), np.asarray(model.point_buf)
    num_verts, num_tris = len(point_buf), len(tris)
    region = np.zeros(num_verts, bool)
    region[tris[np.asarray(model.region_triangles())].reshape(-1)] = True
    touching = region[tris].any(axis=1)
    kept = np.zeros(num_verts, bool)
    kept[tris[touching].reshape(-1)] = True
    kept[np.asarray(model.keypoints)] = True
    vertices = np.flatnonzero(kept)
    local = np.full(num_verts, len(vertices), np.int64)
    local[vertices] = np.arange(len(vertices))
    kept_tris = np.flatnonzero(touching)
    tri_local = np.full(num_tris + 1, len(kept_tris), np.int64)  # padding id T -> N too
    tri_local[kept_tris] = np.arange(len(kept_tris))
    as_i32 = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
    return Region(
        as_i32(vertices),
        as_i32(local),
        as_i32(local[tris[kept_tris]]),
        as_i32(tri_local[point_buf[vertices]]),
        as_i32(np.flatnonzero(np.asarray(model.skin_mask) != 0)),
    )


class Bases(NamedTuple):
    """The model on a `Region`, split by coordinate (`prepare`; built once per fit).

    shape: 3 x f32[P, 144]  identity | expression basis of x, y, z
    mean_shape: f32[3, P]
    albedo: 3 x f32[P, 80]  albedo basis of r, g, b, 0-1 units
    mean_albedo: f32[3, P]
    mesh: Mesh              the region's triangles with the normals' backward tables
    keypoints: i32[68]      landmark vertices, local ids
    albedo_prior: AlbedoPrior
    local: i32[V]           model vertex id -> local id (`Region.local`)
    """

    shape: jnp.ndarray
    mean_shape: jnp.ndarray
    albedo: jnp.ndarray
    mean_albedo: jnp.ndarray
    mesh: Mesh
    keypoints: jnp.ndarray
    albedo_prior: AlbedoPrior
    local: jnp.ndarray


def prepare(model: FaceModel, region: Region) -> Bases:
    """Per-coordinate bases on the region's vertices: each coordinate is then one plain
    matmul whose backward needs no strided slicing of a [3P, B] product (one copy of the
    bases, made once). Separate arrays, not one [3, P, K]: XLA:CPU copies a slice of the
    stacked array before each product (3 products 6.9 -> 29.8 ms at P = 29,100)."""
    v = region.vertices
    shape = jnp.concatenate([model.id_base[v], model.exp_base[v]], axis=-1)
    return Bases(
        tuple(shape[:, i] for i in range(3)),
        model.mean_shape[v].T,
        tuple(model.tex_base[v, i] / 255.0 for i in range(3)),
        model.mean_tex[v].T / 255.0,
        mesh_tables(region.tris, region.point_buf),
        region.local[model.keypoints],
        albedo_prior(model, region.skin),
        region.local,
    )


class AlbedoPrior(NamedTuple):
    """`losses.albedo_regularizer` as a quadratic form of the albedo coefficients t:
    (const + 2 lin . t + t^T gram t) / total. gram: f32[80, 80]; lin: f32[80]; const,
    total: f32[]."""

    gram: jnp.ndarray
    lin: jnp.ndarray
    const: jnp.ndarray
    total: jnp.ndarray


def albedo_prior(model: FaceModel, skin) -> AlbedoPrior:
    """The regularizer's form from the skin rows (skin: i32[S] vertex ids with every
    nonzero of `skin_mask`). The albedo is linear in t, so its skin variance is quadratic:
    the steps then need no per-vertex pass for it."""
    m = model.skin_mask[skin]
    total = jnp.sum(m)
    basis = model.tex_base[skin] / 255.0  # [S, 3, 80]
    mean = model.mean_tex[skin] / 255.0  # [S, 3]
    # Centred on the weighted skin mean; the reference squares (a - mean) * m.
    centred_basis = basis - jnp.sum(basis * m[:, None, None], axis=0) / total
    centred_mean = mean - jnp.sum(mean * m[:, None], axis=0) / total
    w = (m * m)[:, None]
    hi = jax.lax.Precision.HIGHEST
    gram = sum(jnp.dot(centred_basis[:, c].T, w * centred_basis[:, c], precision=hi) for c in range(3))
    lin = sum(jnp.dot(centred_basis[:, c].T, w[:, 0] * centred_mean[:, c], precision=hi) for c in range(3))
    return AlbedoPrior(gram, lin, jnp.sum(w * centred_mean**2), total)


class Mesh(NamedTuple):
    """A triangle mesh with the tables of `vertex_normals_vm`'s gather-only backward pass.

    tris: i32[T, 3]; point_buf: i32[V, P] (triangles of each vertex, padded with T)
    listed: f32[T, 3]   how often the point_buf row of corner k lists triangle t
    slot: i32[V, P]     row k * T + t of the corner-cotangent table for the vertex's
                        triangle t = point_buf[v, j] of which it is corner k (3T: padding)
    """

    tris: jnp.ndarray
    point_buf: jnp.ndarray
    listed: jnp.ndarray
    slot: jnp.ndarray


def mesh_tables(tris, point_buf) -> Mesh:
    """`Mesh` of a topology (cheap; computed once per fit, not per step)."""
    tris, point_buf = jnp.asarray(tris), jnp.asarray(point_buf)
    num_tris, num_verts = tris.shape[0], point_buf.shape[0]
    listed = jnp.sum(point_buf[tris] == jnp.arange(num_tris)[:, None, None], axis=-1).astype(jnp.float32)
    tri = jnp.minimum(point_buf, num_tris - 1)
    corner = jnp.argmax(tris[tri] == jnp.arange(num_verts)[:, None, None], axis=-1)
    slot = jnp.where(point_buf < num_tris, corner * num_tris + tri, 3 * num_tris).astype(jnp.int32)
    return Mesh(tris, point_buf, listed, slot)


def _linear(mean, basis, coeffs):
    """mean f32[3, V] + basis (3 x f32[V, K]) @ coeffs f32[B, K]: three f32[V, B]."""
    return tuple(mean[i][:, None] + basis[i] @ coeffs.T for i in range(3))


@jax.custom_vjp
def vertex_normals_vm(pos, mesh: Mesh):
    """Unit vertex normals (three f32[V, B]) of shapes pos = (x, y, z), each f32[V, B].

    Same formula as `formation.vertex_normals`: face normal normalize((v1 - v2) x (v2 - v3)),
    summed over the triangles of `point_buf` (padding id T -> zero normal), normalized.
    mesh: `mesh_tables(tris, point_buf)`. The backward pass only gathers (no scatter-add):
    it needs `point_buf` to list every triangle of its vertex once (true of the BFM
    topology; `point_buf_is_complete` checks, and `fit` refuses a model without it).
    """
    return _normals_fwd(pos, mesh)[0]


def _normals_fwd(pos, mesh: Mesh):
    tris, point_buf = mesh.tris, mesh.point_buf
    corner = [[p[tris[:, k]] for p in pos] for k in range(3)]  # [corner][coord] f32[T, B]
    a = tuple(corner[0][i] - corner[1][i] for i in range(3))
    b = tuple(corner[1][i] - corner[2][i] for i in range(3))
    cross = _cross(a, b)
    face, face_inv, face_ok = _normalize_parts(cross)
    face = _materialize(face)
    # The padding id T reads a clamped row, masked to zero (no padded copy of the table).
    num_tris = tris.shape[0]
    listed = [(point_buf[:, j] < num_tris)[:, None] for j in range(point_buf.shape[1])]
    rows = [jnp.minimum(point_buf[:, j], num_tris - 1) for j in range(point_buf.shape[1])]
    summed = tuple(sum(jnp.where(m, f[r], 0.0) for m, r in zip(listed, rows)) for f in face)
    normals, inv, ok = _normalize_parts(summed)
    return normals, (a, b, face, face_inv, face_ok, normals, inv, ok, mesh)


@jax.named_scope("normals_bwd")
def _normals_bwd(res, g):
    a, b, face, face_inv, face_ok, normals, inv, ok, mesh = res
    tris, listed = mesh.tris, mesh.listed.astype(a[0].dtype)
    g_sum = _materialize(_normalize_vjp(normals, inv, ok, g))
    # Triangle t receives the cotangent of each vertex whose point_buf lists it (its corners).
    g_face = tuple(sum(listed[:, k, None] * gs[tris[:, k]] for k in range(3)) for gs in g_sum)
    g_cross = _normalize_vjp(face, face_inv, face_ok, g_face)
    g_a, g_b = _materialize((_cross(b, g_cross), _cross(g_cross, a)))
    # Corner cotangents as one table per coordinate, rows k * T + t, plus a zero row.
    zero = jnp.zeros((1, a[0].shape[1]), a[0].dtype)
    tables = _materialize(tuple(jnp.concatenate([g_a[i], g_b[i] - g_a[i], -g_b[i], zero]) for i in range(3)))
    g_pos = tuple(sum(t[mesh.slot[:, j]] for j in range(mesh.slot.shape[1])) for t in tables)
    return g_pos, None


vertex_normals_vm.defvjp(_normals_fwd, _normals_bwd)


def point_buf_is_complete(tris, point_buf) -> bool:
    """True when `point_buf` lists exactly the triangles of each vertex (numpy check)."""
    tris, point_buf = np.asarray(tris), np.asarray(point_buf)
    num_tris, num_verts = len(tris), len(point_buf)
    valence = np.bincount(tris.reshape(-1), minlength=num_verts)
    listed = point_buf < num_tris
    if not np.array_equal(listed.sum(axis=1), valence):
        return False
    rows = tris[np.minimum(point_buf, num_tris - 1)]
    if not np.all((rows == np.arange(num_verts)[:, None, None]).any(axis=-1)[listed]):
        return False
    ids = np.sort(np.where(listed, point_buf, -1 - np.arange(point_buf.shape[1])), axis=1)
    return bool(np.all(ids[:, 1:] != ids[:, :-1]))  # no triangle listed twice


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _normalize_parts(vec, eps=1e-12):
    """(vec / max(|vec|, eps), the scale used, |vec| > eps), as torch.nn.functional.normalize."""
    sq = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2]
    ok = sq > eps * eps
    inv = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, sq, 1.0)), 1.0 / eps)
    return tuple(c * inv for c in vec), inv, ok


def _normalize_vjp(unit, inv, ok, g):
    """Cotangent of vec from that of unit = vec * inv: (g - unit (unit . g)) * inv where the
    length is above eps, g * inv (a constant scale) below it."""
    dot = jnp.where(ok, unit[0] * g[0] + unit[1] * g[1] + unit[2] * g[2], 0.0)
    return tuple((gc - u * dot) * inv for u, gc in zip(unit, g))


def _materialize(tree):
    """Identity that makes XLA keep `tree` in memory: a conditional's result cannot be fused.

    Without it XLA:CPU fuses cheap elementwise producers into each gather that reads them
    and recomputes them per gathered element, reading their inputs at random (3x slower).
    The predicate is true for any input (NaN included) but not a compile-time constant.
    """
    leaf = jax.tree.leaves(tree)[0]
    keep = ~(leaf.reshape(-1)[0] > jnp.inf)
    return jax.lax.cond(keep, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t), tree)


def _rotate(vec, rot):
    # rot f32[B, 3, 3]: out_i = sum_j R_ij vec_j, broadcast over the vertex axis.
    return tuple(sum(rot[:, i, j] * vec[j] for j in range(3)) for i in range(3))


def form_faces_vm(bases: Bases, coeffs, rot, camera: Camera = Camera()) -> Faces:
    """`formation.form_face` for a batch, batch minor, on the vertices of `bases`.

    bases: `prepare(model, region)`; coeffs: `Coeffs` with fields f32[B, n]; rot: f32[B, 3, 3]
    (`formation.rotation_matrix`).
    """
    with jax.named_scope("bases"):  # scopes name the stages in profiles
        pos = _linear(bases.mean_shape, bases.shape, jnp.concatenate([coeffs.id, coeffs.exp], axis=-1))
        albedo = _linear(bases.mean_albedo, bases.albedo, coeffs.tex)
    with jax.named_scope("normals"):
        normals = _rotate(vertex_normals_vm(pos, bases.mesh), rot)
    x, y, z = (p + t for p, t in zip(_rotate(pos, rot), coeffs.trans.T))
    depth = camera.distance - z
    u = camera.focal * x / depth + camera.center
    v = camera.focal * y / depth + camera.center
    in_front = depth > NEAR
    inv_depth = jnp.where(in_front, 1.0 / jnp.where(in_front, depth, 1.0), 0.0)
    screen = (u, camera.image_size - 1 - v, inv_depth)
    return Faces(albedo, normals, _shade_vm(albedo, normals, coeffs.gamma), screen, (u, v))


def _shade_vm(albedo, normals, gamma):
    """albedo * (Y(n) . gamma_c) with the ambient offset; gamma f32[B, 27]."""
    terms = sh_terms(*normals)
    g = gamma.reshape(-1, 3, 9).at[:, :, 0].add(AMBIENT_OFFSET)
    return tuple(albedo[c] * sum(terms[k] * g[:, c, k] for k in range(9)) for c in range(3))


class Samples(NamedTuple):
    """Up to K pixel samples per image of a batch, fixed at a z-buffer refresh.

    Image-major, unlike the vertex tables: consecutive samples are neighbouring pixels of
    one image, so their gathers and scatter-adds stay within that image's table.

    corners: i32[3, B, K]   flat ids b * V + v of the corners of each sample's triangle
    px, py: f32[B, K]       sample position (column, top-down row)
    target: f32[3, B, K]    the image's colour there (r, g, b)
    weight: f32[B, K]       1 / (samples of that image) on real samples, 0 on padding
    """

    corners: jnp.ndarray
    px: jnp.ndarray
    py: jnp.ndarray
    target: jnp.ndarray
    weight: jnp.ndarray


def pixel_samples(tri_id, tris, keep, image, size: int):
    """Samples of ONE image (batch first; see `batch_samples`): the `keep` pixels.

    tri_id: i32[H, W] z-buffer of the image (`Fragments.tri_id`); keep: bool[H, W] pixels to sample (a subset of the
    covered ones); image: f32[H, W, 3]. When more than `size` pixels are kept, `size` of
    them are taken evenly in raster order (the loss is a mean, so this is an unbiased
    thinning). Returns (corners i32[K, 3] vertex ids, px, py, target f32[K, 3], weight)
    with K = size.
    """
    height, width = tri_id.shape
    flat = keep.reshape(-1)
    count = jnp.sum(flat)
    rank = jnp.cumsum(flat) - 1.0
    step = jnp.minimum(1.0, size / jnp.maximum(count, 1))
    # The first pixel of each of `size` equal buckets of ranks: exactly min(size, count).
    chosen = flat & (jnp.floor(rank * step) > jnp.floor((rank - 1) * step))
    (pix,) = jnp.nonzero(chosen, size=size, fill_value=0)
    real = jnp.arange(size) < jnp.sum(chosen)
    tri = jnp.maximum(tri_id.reshape(-1)[pix], 0)
    weight = real / jnp.maximum(jnp.sum(real), 1)
    target = image.reshape(-1, 3)[pix]
    return tris[tri], (pix % width).astype(jnp.float32), (pix // width).astype(jnp.float32), target, weight


def batch_samples(corners, px, py, target, weight, num_vertices: int) -> Samples:
    """Stack `pixel_samples` outputs of B images (leading B axes) into `Samples`."""
    batch = corners.shape[0]
    flat = jnp.moveaxis(corners, 2, 0) + num_vertices * jnp.arange(batch, dtype=corners.dtype)[:, None]
    return Samples(flat, px, py, jnp.moveaxis(target, 2, 0), weight)


@jax.named_scope("samples")
def interpolate_samples(channels, screen, samples: Samples):
    """Perspective-correct interpolation at the samples: one f32[B, K] per channel.

    channels: tuple of f32[V, B] vertex values; screen: (x, y, 1/z) each f32[V, B].
    """
    # Tables transposed to image-major f32[B * V]: a sample's corners are then near each
    # other's in memory (neighbouring pixels hit neighbouring vertices), which makes these
    # scalar gathers and their scatter-add cotangents more cache-friendly.
    channels, screen = _materialize((tuple(c.T for c in channels), tuple(s.T for s in screen)))
    gather = lambda table, k: table.reshape(-1)[samples.corners[k]]
    corners = tuple(tuple(gather(s, k) for k in range(3)) for s in screen)
    values = tuple(tuple(gather(c, k) for k in range(3)) for c in channels)
    return _blend(corners, values, samples.px, samples.py, samples.weight > 0)


@jax.custom_vjp
def _blend(corners, values, px, py, valid):
    """sum_k bary_k * values[c][k] per channel c, bary as in `perspective_barycentrics`.

    corners: ((x_k), (y_k), (1/z_k)) and values: per channel (v_k), each f32[B, K]. The
    hand-written backward computes the shared intermediates once: autodiff lets XLA
    recompute them inside each of the 3 * (3 + C) scatter-add operands.
    """
    return _blend_fwd(corners, values, px, py, valid)[0]


def _blend_fwd(corners, values, px, py, valid):
    # The arithmetic of `perspective_barycentrics`, keeping what the backward pass needs.
    x, y, edge = edge_functions(corners, px, py)
    weighted = [e * iz for e, iz in zip(edge, corners[2])]
    inv_total = 1.0 / jnp.where(valid, weighted[0] + weighted[1] + weighted[2], 1.0)
    bary = [jnp.where(valid, w * inv_total, 0.0) for w in weighted]
    out = tuple(sum(bary[k] * v[k] for k in range(3)) for v in values)
    return out, (x, y, edge, corners[2], bary, jnp.where(valid, inv_total, 0.0), values)


@jax.named_scope("samples_bwd")
def _blend_bwd(res, g):
    x, y, edge, inv_depth, bary, inv_total, values = res
    g_bary = [sum(gc * v[k] for gc, v in zip(g, values)) for k in range(3)]
    mean = g_bary[0] * bary[0] + g_bary[1] * bary[1] + g_bary[2] * bary[2]
    g_w = _materialize([(gb - mean) * inv_total for gb in g_bary])  # 0 where not valid
    g_edge = [gw * iz for gw, iz in zip(g_w, inv_depth)]
    g_x, g_y = [0.0] * 3, [0.0] * 3
    for e, (i, j) in zip(g_edge, ((1, 2), (2, 0), (0, 1))):  # edge = x_i y_j - x_j y_i
        g_x[i] = g_x[i] + e * y[j]
        g_y[j] = g_y[j] + e * x[i]
        g_x[j] = g_x[j] - e * y[i]
        g_y[i] = g_y[i] - e * x[j]
    g_corners = (tuple(g_x), tuple(g_y), tuple(gw * e for gw, e in zip(g_w, edge)))
    g_values = tuple(tuple(bary[k] * gc for k in range(3)) for gc in g)
    return g_corners, g_values, None, None, None


_blend.defvjp(_blend_fwd, _blend_bwd)


def photometric_vm(colors, screen, samples: Samples, eps: float = PHOTO_EPS):
    """Per-image photometric loss f32[B] (losses.photometric_loss on the samples)."""
    rendered = interpolate_samples(colors, screen, samples)
    sq = sum((jnp.clip(r, 0.0, 1.0) - samples.target[c]) ** 2 for c, r in enumerate(rendered))
    return jnp.sum(jnp.sqrt(eps + sq) * samples.weight, axis=1)


def albedo_regularizer_vm(prior: AlbedoPrior, tex):
    """Per-image `losses.albedo_regularizer` f32[B] from the albedo coefficients tex f32[B, 80]."""
    quad = jnp.sum((tex @ prior.gram) * tex, axis=-1)
    return (prior.const + 2.0 * tex @ prior.lin + quad) / prior.total
