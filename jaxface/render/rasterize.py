"""Z-buffer rasterizer built from jax primitives: which triangle each pixel sees.

The z-buffer is not differentiable (triangle ids are integers); the barycentrics that
`rasterize` returns with it are computed by `render.barycentric`, differentiable there.

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
distance 10 gets buckets of about 5e-6 relative depth, and a stray near vertex
coarsens them gracefully instead of collapsing everything into one bucket.

Footprints: each triangle's pixel-centre bounding box (clipped to the image) is cut
into TILE x TILE tiles. The first tile of every triangle is rasterized in one dense
pass (triangles on the minor axis, which XLA's CPU code vectorizes best); at 224x224
98% of face triangles fit in it. The remaining tiles of larger triangles are
enumerated with a prefix sum and processed CHUNK tiles at a time: one straight pass
(all a face at 224 needs), then a `while_loop` for the rest, so no triangle is ever
dropped, whatever its size, at static shapes. Under vmap on CPU the z-buffer runs
image by image (`lax.map`, see `_batching_zbuffer`).
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from jaxface.render.barycentric import NEAR, pixel_barycentrics

MIN_AREA2 = 1e-8  # doubled screen area (px^2) below which a triangle is degenerate
TILE = 2  # footprint tile side in pixels
CHUNK = 0  # tiles per pass of the large-triangle loop; 0: max(1024, T // 16)
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
    Returns `Fragments` (gradients stopped; `interpolate` with `verts_screen` gives
    gradients w.r.t. vertex positions). Batch with `jax.vmap`.
    """
    check_mesh(verts_screen, tris)
    height, width = check_size(height, width)
    return _rasterize(verts_screen, tris, height=height, width=width)


@partial(jax.jit, static_argnames=("height", "width", "tile", "chunk"))
def _rasterize(verts_screen, tris, height: int, width: int, tile: int = TILE, chunk: int = CHUNK) -> Fragments:
    verts = lax.stop_gradient(verts_screen).astype(jnp.float32)
    tri_id = triangle_ids(verts, tris, height, width, tile, chunk)
    bary, depth = pixel_barycentrics(verts, tris, tri_id)
    return Fragments(tri_id, jnp.moveaxis(bary, 0, -1), depth)


def triangle_ids(verts, tris, height: int, width: int, tile: int = TILE, chunk: int = CHUNK):
    """The z-buffer alone: i32[H, W] winning triangle per pixel, -1 on background."""
    return _batching_zbuffer(height, width, tile, chunk)(lax.stop_gradient(verts).astype(jnp.float32), tris.astype(jnp.int32))


@functools.lru_cache(maxsize=None)
def _batching_zbuffer(height, width, tile, chunk):
    """`_zbuffer` with a batching rule: under vmap on CPU, images go one at a time.

    A vmapped scatter-min is about twice as slow per image on XLA:CPU as an unbatched one,
    and a vmapped `while_loop` drags the whole batch through every iteration; `lax.map`
    avoids both. Other backends keep plain vmap (parallel scatters are native there).
    """
    one = partial(_zbuffer, height=height, width=width, tile=tile, chunk=chunk)

    @custom_vmap
    def zbuffer(verts, tris):
        return one(verts, tris)

    @zbuffer.def_vmap
    def _(axis_size, in_batched, verts, tris):
        if jax.default_backend() != "cpu":
            return jax.vmap(one, in_axes=tuple(0 if b else None for b in in_batched))(verts, tris), True
        if not in_batched[0]:
            verts = jnp.broadcast_to(verts, (axis_size, *verts.shape))
        if in_batched[1]:
            return lax.map(lambda vt: one(*vt), (verts, tris)), True
        return lax.map(lambda v: one(v, tris), verts), True

    return zbuffer


def _zbuffer(verts, tris, height: int, width: int, tile: int, chunk: int):
    num_tris = tris.shape[0]
    # Per coordinate f32[3, T] (corner, triangle): triangles on the minor axis vectorize best.
    corners = tuple(verts[:, k][tris.T] for k in range(3))
    id_bits = id_bits_for(num_tris)
    wb_max, shift = _depth_quantizer(verts, 32 - id_bits)
    candidates = partial(_candidates, wb_max=wb_max, shift=shift, id_bits=id_bits, height=height, width=width)
    zbuf = jnp.full(height * width, _BACKGROUND, jnp.uint32)

    # Dense pass: tile (0, 0) of every triangle, [tile * tile, T].
    dy, dx = (a.reshape(-1, 1) for a in np.mgrid[:tile, :tile].astype(np.int32))
    ids = jnp.arange(num_tris, dtype=jnp.int32)
    zbuf = _scatter_min(zbuf, *candidates(*_setup(corners, height, width), ids, dx, dy))

    # Remaining tiles of triangles larger than one tile: one pass over the first `chunk`
    # (enough for faces at 224), then a loop for the rest (more only for big triangles).
    # Triangle parameters are recomputed where used rather than stored: XLA fuses them
    # into the candidate arithmetic, which is much faster than materializing 16 [T] rows.
    _, _, ncols, nrows = _setup(corners, height, width)[1]
    tiles_x = jnp.maximum((ncols + tile - 1) // tile, 1)
    extra = jnp.where(nrows > 0, tiles_x * ((nrows + tile - 1) // tile) - 1, 0)
    ends = jnp.cumsum(extra)  # work item w belongs to the first triangle with ends > w
    total = ends[-1]
    chunk = chunk or max(1024, num_tris // 16)

    def more_tiles(start, zbuf):
        work = start + jnp.arange(chunk, dtype=jnp.int32)
        tri = jnp.minimum(jnp.searchsorted(ends, work, side="right"), num_tris - 1).astype(jnp.int32)
        tile_no = work - (ends[tri] - extra[tri]) + 1  # tile number within the triangle; 0 was done
        params, (col0, row0, ncols, nrows) = _setup(tuple(c[:, tri] for c in corners), height, width)
        box = (col0, row0, jnp.where(work < total, ncols, 0), nrows)
        ox, oy = tile_no % tiles_x[tri] * tile, tile_no // tiles_x[tri] * tile
        return _scatter_min(zbuf, *candidates(params, box, tri, ox + dx, oy + dy))

    zbuf = more_tiles(0, zbuf)
    _, zbuf = lax.while_loop(
        lambda s: s[0] < total, lambda s: (s[0] + chunk, more_tiles(s[0], s[1])), (jnp.int32(chunk), zbuf)
    )

    zbuf = zbuf.reshape(height, width)
    return jnp.where(zbuf == _BACKGROUND, -1, (zbuf & ((1 << id_bits) - 1)).astype(jnp.int32))


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

    corners: (x, y, depth) corner coordinates, each f32[3, T] (corner, triangle).
    Returns params, 12 x f32[T] (oriented edge coefficients a_k, b_k, c_k for k = 0..2,
    then the inverse-depth plane aw, bw, cw), and box, 4 x i32[T] (origin column, origin
    row, columns, rows of the clipped pixel-centre bounding box; 0 x 0 when culled).
    """
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = corners
    finite = jnp.isfinite(x0 + x1 + x2 + y0 + y1 + y2 + z0 + z1 + z2)  # inf - inf is NaN: caught too
    drawn = finite & (jnp.minimum(jnp.minimum(z0, z1), z2) > NEAR)
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
    iz0, iz1, iz2 = (jnp.where(drawn, 1.0 / jnp.where(drawn, zk, 1.0), 0.0) for zk in (z0, z1, z2))
    # w = iz0 + (iz1 - iz0) l1 + (iz2 - iz0) l2: exactly iz0 for constant depth, so coplanar
    # neighbours at equal depth get equal keys and the lower id wins, as documented.
    d1, d2 = (iz1 - iz0) * inv_area, (iz2 - iz0) * inv_area
    plane = [a[1] * d1 + a[2] * d2, b[1] * d1 + b[2] * d2, iz0 + (c[1] * d1 + c[2] * d2)]
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


def _candidates(params, box, ids, px, py, *, wb_max, shift, id_bits, height, width):
    """Flat pixel indices i32[P, N] and keys u32[P, N] of candidate pixels.

    params 12 x f32[N], box 4 x i32[N], ids i32[N]; px, py: i32[P, N] (or broadcastable)
    offsets from each triangle's origin. Non-covered candidates get the background key
    (a no-op for the min) at an in-bounds index, so the index needs no coverage test.
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
    idx = jnp.minimum(box[1] + py, height - 1) * width + jnp.minimum(box[0] + px, width - 1)
    return idx, jnp.where(inside, key, _BACKGROUND)


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
