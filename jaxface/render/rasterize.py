"""Z-buffer rasterizer built from jax primitives (non-differentiable by design).

Sampling: pixel (row i, col j) samples the screen point (x=j, y=i); vertices come as
`verts_screen f32[V, 3]` = (x = column, y = top-down row, depth = distance in front of
the camera). Depth must be the perspective camera depth: the z-test interpolates its
inverse, which is affine in screen space.

Coverage and tie rule (deterministic, independent of scatter order):
1. A triangle covers a pixel when the pixel centre lies inside or ON its boundary (all
   three edge functions >= 0 after orienting the triangle; both windings are drawn, as
   in nvdiffrast and tf_mesh_renderer: no back-face culling).
2. The nearest candidate wins: largest inverse depth 1/z, interpolated linearly in
   screen space and quantized into the key (below).
3. Among candidates with equal quantized depth the lower triangle id wins.
Culled, never drawn: triangles with a vertex at depth <= NEAR (behind or at the
camera; no near-plane clipping), with |doubled area| < MIN_AREA2 px^2 (degenerate), or
with non-finite coordinates.

Z-buffer: one integer scatter-min of a packed uint32 key per candidate pixel:
(quantized depth << id_bits) | triangle id, id_bits = T.bit_length() (17 for 70,789
triangles, leaving 15 depth bits). Depth is quantized from the float32 bit pattern of
the inverse depth, which is monotone and roughly logarithmic, offset by the nearest
vertex and shifted right just enough that the image's own depth range fits: a face at
distance 10 gets buckets of about 1e-5 relative depth, and a stray near vertex
coarsens them gracefully instead of collapsing everything into one bucket.

Footprints: each triangle's pixel-centre bounding box (clipped to the image) is cut
into TILE x TILE tiles. The first tile of every triangle is rasterized in one dense
pass (triangles on the last axis, which XLA's CPU code vectorizes best); at 224x224
almost every face triangle fits in it. The remaining tiles of larger triangles are
enumerated with a prefix sum and processed CHUNK tiles at a time in a `while_loop`,
so no triangle is ever dropped, whatever its size, at static shapes.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NEAR = 1e-5  # triangles with a vertex at depth <= NEAR are culled
MIN_AREA2 = 1e-8  # doubled screen area (px^2) below which a triangle is degenerate
TILE = 4  # footprint tile side in pixels
CHUNK = 512  # tiles per iteration of the large-triangle loop
_BACKGROUND = np.uint32(0xFFFFFFFF)
_MIN_DEPTH_BITS = 10


class Fragments(NamedTuple):
    """What the z-buffer keeps per pixel of one H x W image.

    tri_id: i32[H, W]    winning triangle, -1 on background
    bary: f32[H, W, 3]   perspective-correct barycentric weights of its three vertices
                         (0 on background)
    depth: f32[H, W]     interpolated camera depth (0 on background)
    """

    tri_id: jnp.ndarray
    bary: jnp.ndarray
    depth: jnp.ndarray


def rasterize(verts_screen, tris, height: int, width: int) -> Fragments:
    """Rasterize one mesh into an H x W z-buffer.

    verts_screen: f32[V, 3]  (x = column, y = top-down row, depth > 0 in front of camera)
    tris: i32[T, 3]          zero-based vertex indices
    Returns `Fragments`. Gradients are stopped; use `interpolate` with `verts_screen`
    for gradients w.r.t. vertex positions. Batch with `jax.vmap`.
    """
    check_mesh(verts_screen, tris)
    height, width = check_size(height, width)
    return _rasterize(verts_screen, tris, height=height, width=width)


@partial(jax.jit, static_argnames=("height", "width"))
def _rasterize(verts_screen, tris, height: int, width: int) -> Fragments:
    verts = lax.stop_gradient(verts_screen).astype(jnp.float32)
    tris = tris.astype(jnp.int32)
    num_tris = tris.shape[0]
    params, box = _setup(verts.T[:, tris.T], height, width)
    id_bits = id_bits_for(num_tris)
    wb_max, shift = _depth_quantizer(verts, 32 - id_bits)
    candidates = partial(_candidates, wb_max=wb_max, shift=shift, id_bits=id_bits, width=width)
    zbuf = jnp.full(height * width, _BACKGROUND, jnp.uint32)

    # Dense pass: tile (0, 0) of every triangle, [TILE * TILE, T].
    dy, dx = (a.reshape(-1, 1) for a in np.mgrid[:TILE, :TILE].astype(np.int32))
    zbuf = _scatter_min(zbuf, *candidates(params, box, jnp.arange(num_tris, dtype=jnp.int32), dx, dy))

    # Remaining tiles of triangles larger than one tile, CHUNK tiles per iteration.
    col0, row0, ncols, nrows = box
    tiles_x = jnp.maximum((ncols + TILE - 1) // TILE, 1)
    extra = jnp.where(nrows > 0, tiles_x * ((nrows + TILE - 1) // TILE) - 1, 0)
    ends = jnp.cumsum(extra)  # work item w belongs to the first triangle with ends > w
    total = ends[-1]

    def body(state):
        start, zbuf = state
        work = start + jnp.arange(CHUNK, dtype=jnp.int32)
        tri = jnp.minimum(jnp.searchsorted(ends, work, side="right"), num_tris - 1).astype(jnp.int32)
        tile = work - (ends[tri] - extra[tri]) + 1  # tile number within the triangle; 0 was done
        live = work < total
        sub_box = (col0[tri], row0[tri], jnp.where(live, ncols[tri], 0), nrows[tri])
        ox, oy = tile % tiles_x[tri] * TILE, tile // tiles_x[tri] * TILE
        sub_params = tuple(p[tri] for p in params)
        return start + CHUNK, _scatter_min(zbuf, *candidates(sub_params, sub_box, tri, ox + dx, oy + dy))

    _, zbuf = lax.while_loop(lambda s: s[0] < total, body, (jnp.int32(0), zbuf))

    zbuf = zbuf.reshape(height, width)
    tri_id = jnp.where(zbuf == _BACKGROUND, -1, (zbuf & ((1 << id_bits) - 1)).astype(jnp.int32))
    valid = tri_id >= 0
    rows, cols = jnp.mgrid[:height, :width].astype(jnp.float32)
    corners = verts.T[:, tris[jnp.maximum(tri_id, 0)].transpose(2, 0, 1)]  # f32[3, 3, H, W]
    bary, depth = perspective_barycentrics(corners, cols, rows, valid)
    return Fragments(tri_id, jnp.moveaxis(bary, 0, -1), depth)


def perspective_barycentrics(corners, px, py, valid):
    """Perspective-correct barycentrics of sample points in their triangles.

    corners: f32[3, 3, *S]  (x / y / depth, corner k, sample) screen vertices of each
                            sample's triangle
    px, py: f32[*S]         sample positions
    valid: bool[*S]         False where there is no triangle (outputs 0, safe gradients)
    Returns (bary f32[3, *S] corner first, depth f32[*S]). Differentiable w.r.t. corners.
    Screen weights l_k come from edge functions taken relative to the sample (accurate
    for small triangles far from the origin); perspective weights are l_k / z_k, normalized.
    """
    x = [xk - px for xk in corners[0]]
    y = [yk - py for yk in corners[1]]
    # Doubled signed area of (sample, v_k+1, v_k+2); they sum to the doubled triangle area.
    edge = [x[i] * y[j] - x[j] * y[i] for i, j in ((1, 2), (2, 0), (0, 1))]
    inv_area = 1.0 / jnp.where(valid, edge[0] + edge[1] + edge[2], 1.0)
    weighted = [e * inv_area / jnp.where(valid, zk, 1.0) for e, zk in zip(edge, corners[2])]
    inv_depth = jnp.where(valid, weighted[0] + weighted[1] + weighted[2], 1.0)
    bary = jnp.stack([jnp.where(valid, w / inv_depth, 0.0) for w in weighted])
    return bary, jnp.where(valid, 1.0 / inv_depth, 0.0)


def id_bits_for(num_tris: int) -> int:
    """Low key bits that hold a triangle id in 0..T-1 (all-ones stays the background)."""
    bits = max(1, int(num_tris).bit_length())
    if 32 - bits < _MIN_DEPTH_BITS:
        raise ValueError(
            f"mesh has {num_tris} triangles; the 32-bit z-buffer key holds at most "
            f"{2 ** (32 - _MIN_DEPTH_BITS) - 1} ids with {_MIN_DEPTH_BITS} depth bits. Split the mesh."
        )
    return bits


def _setup(corners, height, width):
    """Per-triangle coverage parameters relative to each triangle's bounding-box origin.

    corners: f32[3, 3, T] (coordinate x/y/depth, corner, triangle): triangles on the
    last axis, which XLA's CPU code vectorizes best.
    Returns params, 12 x f32[T] (oriented edge coefficients a_k, b_k, c_k for k = 0..2,
    then the inverse-depth plane aw, bw, cw), and box, 4 x i32[T] (origin column, origin
    row, columns, rows of the clipped pixel-centre bounding box; 0 x 0 when culled).
    """
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners
    drawn = jnp.all(jnp.isfinite(corners), axis=(0, 1)) & (jnp.minimum(jnp.minimum(z0, z1), z2) > NEAR)
    # Clamp before the int conversion so huge off-screen coordinates cannot overflow.
    col0 = jnp.ceil(jnp.clip(jnp.minimum(jnp.minimum(x0, x1), x2), 0, width)).astype(jnp.int32)
    col1 = jnp.floor(jnp.clip(jnp.maximum(jnp.maximum(x0, x1), x2), -1, width - 1)).astype(jnp.int32)
    row0 = jnp.ceil(jnp.clip(jnp.minimum(jnp.minimum(y0, y1), y2), 0, height)).astype(jnp.int32)
    row1 = jnp.floor(jnp.clip(jnp.maximum(jnp.maximum(y0, y1), y2), -1, height - 1)).astype(jnp.int32)
    # Small coordinates relative to an integer origin keep the edge functions accurate.
    ox, oy = col0.astype(jnp.float32), row0.astype(jnp.float32)
    x = [jnp.where(drawn, xk - ox, 0.0) for xk in (x0, x1, x2)]
    y = [jnp.where(drawn, yk - oy, 0.0) for yk in (y0, y1, y2)]
    # Edge k (opposite corner k): E_k(p) = a_k px + b_k py + c_k, doubled area of (p, v_k+1, v_k+2).
    nxt = ((1, 2), (2, 0), (0, 1))
    a = [y[i] - y[j] for i, j in nxt]
    b = [x[j] - x[i] for i, j in nxt]
    c = [x[i] * y[j] - x[j] * y[i] for i, j in nxt]
    area2 = c[0] + c[1] + c[2]
    drawn &= jnp.abs(area2) >= MIN_AREA2
    sign = jnp.where(area2 < 0, -1.0, 1.0)
    a, b, c = ([sign * e for e in coef] for coef in (a, b, c))
    inv_area = jnp.where(drawn, 1.0 / jnp.where(drawn, jnp.abs(area2), 1.0), 0.0)
    inv_z = [jnp.where(drawn, 1.0 / jnp.where(drawn, zk, 1.0), 0.0) for zk in (z0, z1, z2)]
    plane = [(coef[0] * inv_z[0] + coef[1] * inv_z[1] + coef[2] * inv_z[2]) * inv_area for coef in (a, b, c)]
    ncols = jnp.where(drawn, jnp.maximum(col1 - col0 + 1, 0), 0)
    nrows = jnp.where(drawn, jnp.maximum(row1 - row0 + 1, 0), 0)
    # Tuples, not stacked arrays: XLA's CPU concatenate of [T] rows is slow.
    return (*a, *b, *c, *plane), (col0, row0, ncols, nrows)


def _depth_quantizer(verts, depth_bits):
    """(bit pattern of the largest vertex inverse depth, right shift) fitting the range in depth_bits."""
    ok = jnp.all(jnp.isfinite(verts), axis=1) & (verts[:, 2] > NEAR)
    bits = lax.bitcast_convert_type(1.0 / jnp.where(ok, verts[:, 2], 1.0), jnp.int32)
    wb_max = jnp.max(jnp.where(ok, bits, 0))
    span = wb_max - jnp.min(jnp.where(ok, bits, wb_max))
    shift = jnp.maximum(32 - lax.clz(span) - depth_bits, 0)  # span's bit length beyond depth_bits
    return wb_max, shift.astype(jnp.uint32)


def _candidates(params, box, ids, px, py, *, wb_max, shift, id_bits, width):
    """Flat pixel indices i32[P, N] and keys u32[P, N] of candidate pixels.

    params 12 x f32[N], box 4 x i32[N], ids i32[N]; px, py: i32[P, N] (or broadcastable)
    offsets from each triangle's origin. Non-covered candidates get the background key.
    """
    a0, a1, a2, b0, b1, b2, c0, c1, c2, aw, bw, cw = params
    fx, fy = px.astype(jnp.float32), py.astype(jnp.float32)
    e0 = a0 * fx + b0 * fy + c0
    e1 = a1 * fx + b1 * fy + c1
    e2 = a2 * fx + b2 * fy + c2
    inside = (jnp.minimum(jnp.minimum(e0, e1), e2) >= 0) & (px < box[2]) & (py < box[3])
    wbits = lax.bitcast_convert_type(aw * fx + bw * fy + cw, jnp.int32)
    q = lax.shift_right_logical(jnp.clip(wb_max - wbits, 0, None).astype(jnp.uint32), shift)
    q = jnp.minimum(q, (1 << (32 - id_bits)) - 1)  # rounding may step just outside the vertex range
    key = (q << id_bits) | ids.astype(jnp.uint32)
    idx = (box[1] + py) * width + (box[0] + px)
    return jnp.where(inside, idx, 0), jnp.where(inside, key, _BACKGROUND)


def _scatter_min(zbuf, idx, key):
    # The barrier keeps XLA from fusing the candidate arithmetic into the scatter's serial loop.
    idx, key = lax.optimization_barrier((idx, key))
    return zbuf.at[idx.ravel()].min(key.ravel(), mode="promise_in_bounds")


def check_size(height, width) -> tuple[int, int]:
    """Validate the static image size; returns it as Python ints."""
    try:
        h, w = int(height), int(width)
    except TypeError as err:
        raise TypeError(f"height and width must be static Python ints, got {height!r}, {width!r}") from err
    if h <= 0 or w <= 0 or h * w >= 2**31:
        raise ValueError(f"image size {h}x{w} must be positive and below 2**31 pixels")
    return h, w


def check_mesh(verts_screen, tris) -> None:
    """Raise a clear error for wrong shapes or dtypes, and (when concrete) NaN vertices or bad ids."""
    if jnp.ndim(verts_screen) != 2 or jnp.shape(verts_screen)[1] != 3:
        raise ValueError(
            f"verts_screen must be f32[V, 3] (x column, y row, depth) for ONE mesh, got shape "
            f"{jnp.shape(verts_screen)}; batch with jax.vmap"
        )
    if jnp.ndim(tris) != 2 or jnp.shape(tris)[1] != 3 or not jnp.issubdtype(jnp.result_type(tris), jnp.integer):
        raise ValueError(
            f"tris must be an integer array [T, 3] of zero-based vertex ids, got shape {jnp.shape(tris)} "
            f"dtype {jnp.result_type(tris)}"
        )
    if jnp.shape(tris)[0] == 0:
        raise ValueError("tris is empty; give at least one triangle")
    if not isinstance(verts_screen, jax.core.Tracer):
        bad = int(np.sum(~np.isfinite(np.asarray(verts_screen))))
        if bad:
            raise ValueError(
                f"verts_screen has {bad} non-finite values (NaN/inf); check the coefficients/camera that "
                "produced them (under jit such triangles are silently culled instead)"
            )
    if not isinstance(tris, jax.core.Tracer):
        t = np.asarray(tris)
        if t.min() < 0 or t.max() >= jnp.shape(verts_screen)[0]:
            raise ValueError(
                f"tris holds vertex ids in [{t.min()}, {t.max()}] but there are {jnp.shape(verts_screen)[0]} "
                "vertices; ids must be zero-based (subtract 1 from one-based .mat indices)"
            )
