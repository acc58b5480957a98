"""Differentiable attribute interpolation over rasterized fragments."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxface.render.rasterize import Fragments, check_mesh, perspective_barycentrics


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

    Gradients: the backward pass of the per-pixel vertex gather is one scatter-add of
    H*W*3 rows into V vertex rows. Contention is low (a vertex only receives the pixels
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
    valid = tri_id >= 0
    corners = tris[jnp.maximum(tri_id, 0)]  # i32[H, W, 3]
    if verts_screen is None:
        bary = jax.lax.stop_gradient(fragments.bary)
        values = attributes[corners]  # f32[H, W, 3, C]
    else:
        # One gather of positions and attributes together: one scatter-add in the backward.
        dtype = jnp.result_type(attributes, verts_screen)
        gathered = jnp.concatenate([verts_screen.astype(dtype), attributes.astype(dtype)], axis=1)[corners]
        height, width = tri_id.shape
        rows, cols = jnp.mgrid[:height, :width].astype(dtype)
        bary, _ = perspective_barycentrics(gathered[..., :3], cols, rows, valid)
        values = gathered[..., 3:]
    out = jnp.einsum("hwk,hwkc->hwc", bary.astype(values.dtype), values)
    return jnp.where(valid[..., None], out, 0.0)
