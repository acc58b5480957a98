"""Perspective-correct barycentrics of pixels or samples in their triangles (differentiable).

Screen coordinates are (x = column, y = top-down row, camera depth). Weights come from edge
functions taken relative to the sample and are divided by each corner's depth, so
attributes interpolate as on the 3D triangle (perspective-correct).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEAR = 1e-5  # corners at camera depth <= NEAR are behind the camera: such triangles are culled


def inverse_depth(depth):
    """1 / depth where depth > NEAR, else 0 (safe gradients)."""
    in_front = depth > NEAR
    return jnp.where(in_front, 1.0 / jnp.where(in_front, depth, 1.0), 0.0)


def pixel_barycentrics(verts, tris, tri_id):
    """(bary f32[3, H, W] corner first, depth f32[H, W]) at pixel centres for given ids.

    Differentiable w.r.t. `verts` f32[V, 3] for the fixed `tri_id` i32[H, W]. The inverse
    depth is taken per vertex before the per-pixel gather, so the per-pixel arithmetic has
    one division instead of eight (and its backward pass correspondingly fewer).
    """
    height, width = tri_id.shape
    rows, cols = jnp.mgrid[:height, :width].astype(verts.dtype)
    # Drawn triangles have all corners in front; the rest is masked by tri_id.
    table = jnp.stack([verts[:, 0], verts[:, 1], inverse_depth(verts[:, 2])], axis=1)
    corners = gather_rows(table, tris.T[:, jnp.maximum(tri_id, 0)])  # f32[3 (x/y/inverse depth), 3, H, W]
    return perspective_barycentrics(tuple(corners), cols, rows, tri_id >= 0)


@jax.custom_vjp
def gather_rows(table, idx):
    """table f32[V, C] at idx i32[*S] -> f32[C, *S] (channel first).

    Same values as `table.T[:, idx]`; the custom backward is ONE row-wise scatter-add into
    f32[V, C] (autodiff would emit one scalar scatter-add per channel plus a transpose,
    several times slower on CPU).
    """
    return table.T[:, idx]


def _gather_rows_fwd(table, idx):
    return table.T[:, idx], (idx, table.shape[0])


def _gather_rows_bwd(res, g):
    idx, num_rows = res
    rows = g.reshape(g.shape[0], -1).T
    return jnp.zeros((num_rows, g.shape[0]), g.dtype).at[idx.reshape(-1)].add(rows), None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def perspective_barycentrics(corners, px, py, valid):
    """Perspective-correct barycentrics of sample points in their triangles.

    corners: (x, y, inverse depth) screen coordinates of the corners of each sample's
                            triangle, each f32[3, *S] (corner k, sample)
    px, py: f32[*S]         sample positions
    valid: bool[*S]         False where there is no triangle (outputs 0, safe gradients)
    Returns (bary f32[3, *S] corner first, depth f32[*S]). Differentiable w.r.t. corners.
    Screen weights come from edge functions e_k taken relative to the sample (accurate for
    small triangles far from the origin); perspective weights are e_k / z_k normalized (the
    triangle's area cancels), and depth = sum_k e_k / sum_k (e_k / z_k).
    """
    x, y, edge = edge_functions(corners, px, py)
    weighted = [e * iz for e, iz in zip(edge, corners[2])]
    inv_total = 1.0 / jnp.where(valid, weighted[0] + weighted[1] + weighted[2], 1.0)
    bary = jnp.stack([jnp.where(valid, w * inv_total, 0.0) for w in weighted])
    return bary, jnp.where(valid, (edge[0] + edge[1] + edge[2]) * inv_total, 0.0)


def edge_functions(corners, px, py):
    """(x_k - px, y_k - py, edge_k) per corner k: edge_k is the doubled signed area of
    (sample, v_k+1, v_k+2); the three sum to the doubled triangle area."""
    x = [xk - px for xk in corners[0]]
    y = [yk - py for yk in corners[1]]
    return x, y, [x[i] * y[j] - x[j] * y[i] for i, j in ((1, 2), (2, 0), (0, 1))]
