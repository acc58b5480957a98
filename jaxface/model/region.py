"""The model's arrays as formation reads them (`Bases`, `Mesh`), on every vertex or on the
part of the mesh the photometric loss reads (`Region`).

The photometric region is `FaceModel.region_triangles()` (the loss mask,
`losses.region_mask`). Fitting forms only the vertices that region needs: its vertices,
every corner of a triangle touching it (so the region's normals are exact: their whole
one-ring is kept) and the 68 keypoints. On the BFM front topology about a fifth of the
vertices and triangles drop out.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.model.face_model import FaceModel


class Mesh(NamedTuple):
    """A triangle mesh with the tables of `vertex_normals`' gather-only backward pass.

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
    """`Mesh` of a topology: cheap, and dead code (removed by XLA) when nothing differentiates."""
    tris, point_buf = jnp.asarray(tris), jnp.asarray(point_buf)
    num_tris, num_verts = tris.shape[0], point_buf.shape[0]
    listed = jnp.sum(point_buf[tris] == jnp.arange(num_tris)[:, None, None], axis=-1).astype(jnp.float32)
    tri = jnp.minimum(point_buf, num_tris - 1)
    corner = jnp.argmax(tris[tri] == jnp.arange(num_verts)[:, None, None], axis=-1)
    slot = jnp.where(point_buf < num_tris, corner * num_tris + tri, 3 * num_tris).astype(jnp.int32)
    return Mesh(tris, point_buf, listed, slot)


def point_buf_is_complete(tris, point_buf) -> bool:
    """True when `point_buf` lists exactly the triangles of each vertex, each once (numpy check).

    The gather-only backward of `vertex_normals` needs it (the BFM topology has it)."""
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
    return bool(np.all(ids[:, 1:] != ids[:, :-1]))


class Bases(NamedTuple):
    """What formation reads of a model, on P of its vertices (all of them: `model_bases`).

    mean_shape: f32[P, 3]; id_base: f32[P, 3, 80]; exp_base: f32[P, 3, 64]
    mean_tex: f32[P, 3] (0-255); tex_base: f32[P, 3, 80]
    mesh: Mesh            triangles over the P vertices, with the normals' backward tables
    keypoints: i32[68]    rows of the 68 landmark vertices
    """

    mean_shape: jnp.ndarray
    id_base: jnp.ndarray
    exp_base: jnp.ndarray
    mean_tex: jnp.ndarray
    tex_base: jnp.ndarray
    mesh: Mesh
    keypoints: jnp.ndarray


def model_bases(model: FaceModel) -> Bases:
    """`Bases` on every vertex of the model (its own arrays, no copies)."""
    return Bases(model.mean_shape, model.id_base, model.exp_base, model.mean_tex, model.tex_base,
                 mesh_tables(model.tris, model.point_buf), model.keypoints)


class Region(NamedTuple):
    """Index tables of the kept part of the mesh (static sizes; `photo_region`).

    vertices: i32[P]       model vertex ids kept
    local: i32[V]          model vertex id -> row of `vertices` (P where not kept)
    tris: i32[N, 3]        the triangles touching the region, in local vertex ids
    point_buf: i32[P, Q]   each kept vertex's kept triangles (rows of `tris`), padded with N
    skin: i32[S]           model vertex ids of the skin (`losses.albedo_prior`)
    """

    vertices: jnp.ndarray
    local: jnp.ndarray
    tris: jnp.ndarray
    point_buf: jnp.ndarray
    skin: jnp.ndarray


def photo_region(model: FaceModel) -> Region:
    """`Region` of a concrete model, built with numpy (normals are exact on the region's
    vertices and partial on the outer ring, where nothing reads them). A traced model keeps
    the whole mesh."""
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


def region_bases(model: FaceModel, region: Region) -> Bases:
    """`formation.Bases` on the region's vertices (a gathered copy: build once per fit)."""
    v = region.vertices
    return Bases(model.mean_shape[v], model.id_base[v], model.exp_base[v], model.mean_tex[v], model.tex_base[v],
                 mesh_tables(region.tris, region.point_buf), region.local[model.keypoints])
