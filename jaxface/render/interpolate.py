"""Differentiable attribute interpolation: over a whole z-buffer (`interpolate`) or at a
list of pixel samples of a batch (`Samples`, `interpolate_samples`, the fitting loop's
sampled path). Both recompute barycentrics from vertex positions for fixed triangle ids:
the renderer's gradient path (no silhouette gradients, as in tf_mesh_renderer)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxface.ops import materialize
from jaxface.render.barycentric import edge_functions, gather_rows, inverse_depth, pixel_barycentrics
from jaxface.render.rasterize import Fragments, check_mesh


def interpolate(attributes, fragments: Fragments, tris, verts_screen=None):
    """Perspective-correct interpolation of vertex attributes at every pixel.

    attributes: f32[V, C]        per-vertex values (colours, normals, ...)
    fragments: Fragments         from `rasterize` (tri_id i32[H, W] fixed, not differentiated)
    tris: i32[T, 3]              the triangles that were rasterized
    verts_screen: f32[V, 3] | None
        When given, barycentrics are recomputed from these vertex positions for the fixed
        triangle ids, so the result is differentiable w.r.t. positions (inside triangles;
        no silhouette gradients, as in tf_mesh_renderer). When None, `fragments.bary` is
        used and only `attributes` receive gradients.
    Returns f32[H, W, C]: sum_k b_k * attributes[tris[tri_id, k]] with perspective-correct
    weights b_k (screen weights divided by vertex depth, renormalized); 0 on background.

    Gradients: the backward pass of the per-pixel vertex gathers are scatter-adds of
    3*H*W values into V vertex rows. Contention is low (a vertex only receives the pixels
    of its few triangles), the regime where the CUDA f32 scatter-add regression of jaxlib
    0.10.2-0.11.0 is near parity; a gather-only backward would need a sort per image.
    """
    if jnp.ndim(attributes) != 2:
        raise ValueError(f"attributes must be f32[V, C] for ONE mesh, got shape {jnp.shape(attributes)}")
    if verts_screen is not None:
        check_mesh(verts_screen, tris)
        if jnp.shape(verts_screen)[0] != jnp.shape(attributes)[0]:
            raise ValueError(
                f"attributes has {jnp.shape(attributes)[0]} rows but verts_screen has "
                f"{jnp.shape(verts_screen)[0]} vertices; give one attribute row per vertex"
            )
    if jnp.ndim(fragments.tri_id) != 2:
        raise ValueError(f"fragments.tri_id must be i32[H, W] (one image), got {jnp.shape(fragments.tri_id)}")
    return _interpolate(attributes, fragments, tris, verts_screen)


@jax.jit
def _interpolate(attributes, fragments: Fragments, tris, verts_screen):
    tri_id = jax.lax.stop_gradient(fragments.tri_id)
    if verts_screen is None:
        bary = jnp.moveaxis(jax.lax.stop_gradient(fragments.bary), -1, 0)
    else:
        bary, _ = pixel_barycentrics(verts_screen, tris, tri_id)
    return blend(attributes, tris, tri_id, bary)


def blend(attributes, tris, tri_id, bary):
    """f32[H, W, C] = sum_k bary[k] * attributes[tris[tri_id, k]]; 0 where tri_id < 0."""
    corners = tris.T[:, jnp.maximum(tri_id, 0)]  # i32[3, H, W]; corner-first layouts vectorize best
    values = gather_rows(attributes, corners)  # f32[C, 3, H, W]
    return jnp.moveaxis(jnp.where(tri_id >= 0, weighted_sum(bary, values), 0.0), 0, -1)


@jax.custom_vjp
def weighted_sum(bary, values):
    """f32[C, *S] = sum_k bary[k] * values[:, k] for bary f32[3, *S], values f32[C, 3, *S].

    The custom backward writes the bary cotangent as explicit sums over the C channels:
    autodiff emits a reduce over the channel axis there, which XLA:CPU lowers to a
    library call that makes the interpolation backward slower.
    """
    return bary[0] * values[:, 0] + bary[1] * values[:, 1] + bary[2] * values[:, 2]


def _weighted_sum_fwd(bary, values):
    return weighted_sum(bary, values), (bary, values)


def _weighted_sum_bwd(res, g):
    bary, values = res
    g_bary = jnp.stack([sum(g[c] * values[c, k] for c in range(values.shape[0])) for k in range(3)])
    return g_bary, bary[None] * g[:, None]


weighted_sum.defvjp(_weighted_sum_fwd, _weighted_sum_bwd)


# ----------------------------------------------------------------------------- pixel samples

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

    tri_id: i32[H, W] z-buffer of the image (`Fragments.tri_id`); keep: bool[H, W] pixels
    to sample (a subset of the covered ones); image: f32[H, W, 3]. When more than `size` pixels are kept, `size` of
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

    channels: tuple of f32[V, B] vertex values (batch minor, `formation.Faces`);
    screen: (column, top-down row, camera depth), each f32[V, B] (`Faces.screen`).
    """
    screen = (screen[0], screen[1], inverse_depth(screen[2]))
    # Tables transposed to image-major f32[B * V]: a sample's corners are then near each
    # other's in memory (neighbouring pixels hit neighbouring vertices), which makes these
    # scalar gathers and their scatter-add cotangents more cache-friendly.
    channels, screen = materialize((tuple(c.T for c in channels), tuple(s.T for s in screen)))
    gather = lambda table, k: table.reshape(-1)[samples.corners[k]]
    corners = tuple(tuple(gather(s, k) for k in range(3)) for s in screen)
    values = tuple(tuple(gather(c, k) for k in range(3)) for c in channels)
    return _sample_blend(corners, values, samples.px, samples.py, samples.weight > 0)


@jax.custom_vjp
def _sample_blend(corners, values, px, py, valid):
    """sum_k bary_k * values[c][k] per channel c, bary as in `perspective_barycentrics`.

    corners: ((x_k), (y_k), (1/z_k)) and values: per channel (v_k), each f32[B, K]. The
    hand-written backward computes the shared intermediates once: autodiff lets XLA
    recompute them inside each of the 3 * (3 + C) scatter-add operands.
    """
    return _sample_blend_fwd(corners, values, px, py, valid)[0]


def _sample_blend_fwd(corners, values, px, py, valid):
    # The arithmetic of `perspective_barycentrics`, keeping what the backward pass needs.
    x, y, edge = edge_functions(corners, px, py)
    weighted = [e * iz for e, iz in zip(edge, corners[2])]
    inv_total = 1.0 / jnp.where(valid, weighted[0] + weighted[1] + weighted[2], 1.0)
    bary = [jnp.where(valid, w * inv_total, 0.0) for w in weighted]
    out = tuple(sum(bary[k] * v[k] for k in range(3)) for v in values)
    return out, (x, y, edge, corners[2], bary, jnp.where(valid, inv_total, 0.0), values)


@jax.named_scope("samples_bwd")
def _sample_blend_bwd(res, g):
    x, y, edge, inv_depth, bary, inv_total, values = res
    g_bary = [sum(gc * v[k] for gc, v in zip(g, values)) for k in range(3)]
    mean = g_bary[0] * bary[0] + g_bary[1] * bary[1] + g_bary[2] * bary[2]
    g_w = materialize([(gb - mean) * inv_total for gb in g_bary])  # 0 where not valid
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


_sample_blend.defvjp(_sample_blend_fwd, _sample_blend_bwd)
