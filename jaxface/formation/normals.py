"""Vertex normals of a batch of shapes, batch minor, with a gather-only backward pass.

Layout: a quantity is one array per coordinate, f32[V, B] with the batch as the LAST axis
(a single face is B = 1). On XLA:CPU every mesh gather then moves one contiguous B-float
row per index, where [B, V, 3] gathers move 3-float rows and [V, 3, B] rows fall off the
fast gather path. The backward pass only gathers (no scatter-add), through index tables
built once per topology (`model.region.mesh_tables`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxface.model.region import Mesh
from jaxface.ops import cross, materialize, normalize_parts, normalize_vjp


@jax.custom_vjp
def vertex_normals(pos, mesh: Mesh):
    """Unit vertex normals (three f32[V, B]) of shapes pos = (x, y, z), each f32[V, B].

    Face normal = normalize((v1 - v2) x (v2 - v3)), summed over the triangles `point_buf`
    lists (the padding id T adds a zero normal), normalized: the references' formula.
    Differentiable in reverse mode; the backward pass needs a complete `point_buf`
    (`model.region.point_buf_is_complete`).
    """
    return _normals_fwd(pos, mesh)[0]


def _normals_fwd(pos, mesh: Mesh):
    tris, point_buf = mesh.tris, mesh.point_buf
    corner = [[p[tris[:, k]] for p in pos] for k in range(3)]  # [corner][coord] f32[T, B]
    a = tuple(corner[0][i] - corner[1][i] for i in range(3))
    b = tuple(corner[1][i] - corner[2][i] for i in range(3))
    face, face_inv, face_ok = normalize_parts(cross(a, b))
    face = materialize(face)
    # The padding id T reads a clamped row, masked to zero (no padded copy of the table).
    num_tris = tris.shape[0]
    listed = [(point_buf[:, j] < num_tris)[:, None] for j in range(point_buf.shape[1])]
    rows = [jnp.minimum(point_buf[:, j], num_tris - 1) for j in range(point_buf.shape[1])]
    summed = tuple(sum(jnp.where(m, f[r], 0.0) for m, r in zip(listed, rows)) for f in face)
    normals, inv, ok = normalize_parts(summed)
    return normals, (a, b, face, face_inv, face_ok, normals, inv, ok, mesh)


@jax.named_scope("normals_bwd")
def _normals_bwd(res, g):
    a, b, face, face_inv, face_ok, normals, inv, ok, mesh = res
    tris, listed = mesh.tris, mesh.listed.astype(a[0].dtype)
    g_sum = materialize(normalize_vjp(normals, inv, ok, g))
    # Triangle t receives the cotangent of each vertex whose point_buf lists it (its corners).
    g_face = tuple(sum(listed[:, k, None] * gs[tris[:, k]] for k in range(3)) for gs in g_sum)
    g_cross = normalize_vjp(face, face_inv, face_ok, g_face)
    g_a, g_b = materialize((cross(b, g_cross), cross(g_cross, a)))
    # Corner cotangents as one table per coordinate, rows k * T + t, plus a zero row.
    zero = jnp.zeros((1, a[0].shape[1]), a[0].dtype)
    tables = materialize(tuple(jnp.concatenate([g_a[i], g_b[i] - g_a[i], -g_b[i], zero]) for i in range(3)))
    g_pos = tuple(sum(t[mesh.slot[:, j]] for j in range(mesh.slot.shape[1])) for t in tables)
    return g_pos, None


vertex_normals.defvjp(_normals_fwd, _normals_bwd)
