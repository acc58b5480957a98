"""Face formation: shape, albedo, pose, camera, SH lighting (SPEC "Face formation").

One implementation, batch minor (`form_batch`): every per-vertex quantity is one array
per component, f32[P, B] with the batch LAST, over the vertices of a `Bases` (the whole
model, or the part the fitting loss reads, `model.region`). `form_faces` (a batch, the
per-face layout [B, V, 3]) and `form_face` (one face) are views of it. The small
per-face functions (rotation, projection, SH basis) are the formulas themselves.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import flip_row
from jaxface.formation.normals import vertex_normals
from jaxface.model.face_model import FaceModel
from jaxface.model.region import Bases, mesh_tables, model_bases

# SH constants (SPEC "lighting").
SH_A = (np.pi, 2 * np.pi / np.sqrt(3.0), 2 * np.pi / np.sqrt(8.0))
SH_C = (1 / np.sqrt(4 * np.pi), np.sqrt(3.0) / np.sqrt(4 * np.pi), 3 * np.sqrt(5.0) / np.sqrt(12 * np.pi))
AMBIENT_OFFSET = 0.8


# ----------------------------------------------------------------------------- formulas

def face_shape(model: FaceModel, id_coeff, exp_coeff):
    """Canonical shape f32[V, 3] = mean + id_base @ id + exp_base @ exp of ONE face."""
    return model.mean_shape + model.id_base @ id_coeff + model.exp_base @ exp_coeff


def face_albedo(model: FaceModel, tex_coeff):
    """Albedo f32[V, 3] in 0-1 (the PyTorch reference's /255) of ONE face."""
    return (model.mean_tex + model.tex_base @ tex_coeff) / 255.0


def rotation_matrix(angle):
    """R = Rz @ Ry @ Rx for angle f32[3] = (x, y, z) radians; returns f32[3, 3]."""
    cx, cy, cz = jnp.cos(angle)
    sx, sy, sz = jnp.sin(angle)
    one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
    rx = jnp.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx]).reshape(3, 3)
    ry = jnp.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).reshape(3, 3)
    rz = jnp.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one]).reshape(3, 3)
    return rz @ ry @ rx


def rigid_transform(points, rot, trans):
    """points f32[N, 3] @ R^T + t."""
    # Three broadcast multiply-adds: XLA:CPU runs a K=3 dot over many rows far slower.
    return points[:, :1] * rot[:, 0] + points[:, 1:2] * rot[:, 1] + points[:, 2:3] * rot[:, 2] + trans


def project(points, camera: Camera = Camera()):
    """Model-space points f32[N, 3] -> (uv f32[N, 2] with v up, depth f32[N]).

    depth = distance - z is the distance in front of the camera (positive when visible).
    """
    depth = camera.distance - points[:, 2]
    return camera.focal * points[:, :2] / depth[:, None] + camera.center, depth


def sh_terms(x, y, z):
    """The nine SH basis values (a list, each shaped like x) of unit normals (x, y, z)."""
    a0c0, a1c1, a2c2 = SH_A[0] * SH_C[0], SH_A[1] * SH_C[1], SH_A[2] * SH_C[2]
    return [
        jnp.full_like(x, a0c0),
        -a1c1 * y,
        a1c1 * z,
        -a1c1 * x,
        a2c2 * x * y,
        -a2c2 * y * z,
        0.5 * a2c2 / np.sqrt(3.0) * (3 * z * z - 1),
        -a2c2 * x * z,
        0.5 * a2c2 * (x * x - y * y),
    ]


def sh_basis(normals):
    """The nine SH basis values f32[N, 9] for unit normals f32[N, 3]."""
    return jnp.stack(sh_terms(normals[:, 0], normals[:, 1], normals[:, 2]), axis=-1)


def keypoint_landmarks(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera()):
    """Projected 68 landmarks f32[68, 2] (v up) of ONE face, forming only the keypoint vertices
    (what `form_face(...).landmarks` gives, without the other vertices)."""
    kp = model.keypoints
    shape = model.mean_shape[kp] + model.id_base[kp] @ coeffs.id + model.exp_base[kp] @ coeffs.exp
    uv, _ = project(rigid_transform(shape, rotation_matrix(coeffs.angle), coeffs.trans), camera)
    return uv


def screen_coords(uv, depth, camera: Camera = Camera()):
    """(uv v-up, depth) -> f32[N, 3] (x = column, y = top-down row, depth) for the rasterizer."""
    return jnp.stack([uv[:, 0], flip_row(uv[:, 1], camera.image_size), depth], axis=-1)


# ----------------------------------------------------------------------------- batch minor

class Faces(NamedTuple):
    """Formation of a batch, batch minor: tuples hold one f32[P, B] array per component.

    shape: (x, y, z)      canonical (unposed) shape
    vertices: (x, y, z)   posed shape
    normals: (x, y, z)    rotated unit normals
    albedo: (r, g, b)     0-1
    colors: (r, g, b)     lit vertex colours (not clipped)
    uv: (u, v)            projected image coordinates, v up
    depth: f32[P, B]      distance in front of the camera
    """

    shape: tuple
    vertices: tuple
    normals: tuple
    albedo: tuple
    colors: tuple
    uv: tuple
    depth: jnp.ndarray

    def screen(self, camera: Camera = Camera()):
        """(column, top-down row, depth), each f32[P, B]: the rasterizer's coordinates."""
        return self.uv[0], flip_row(self.uv[1], camera.image_size), self.depth


def _linear(mean, terms):
    """mean f32[P, 3] + sum of basis f32[P, 3, K] @ coeffs f32[B, K] over terms (basis,
    coeffs), as three f32[P, B]. Products on the bases as stored ([3P, K] @ [K, B]):
    slicing a coordinate out of a basis would copy it on every call."""
    p = mean.shape[0]
    out = sum(basis.reshape(3 * p, -1) @ c.T for basis, c in terms).reshape(p, 3, -1) + mean[:, :, None]
    return tuple(out[:, i] for i in range(3))


def _rotate(vec, rot):
    """out_i = sum_j R_ij vec_j for rot f32[B, 3, 3], broadcast over the vertex axis."""
    return tuple(sum(rot[:, i, j] * vec[j] for j in range(3)) for i in range(3))


def shade(albedo, normals, gamma):
    """Lit colours albedo * (Y(n) . gamma_c) with the +0.8 ambient offset (SPEC "lighting").

    albedo, normals: component tuples of f32[P, B]; gamma f32[B, 27] (3 channels x 9)."""
    terms = sh_terms(*normals)
    g = gamma.reshape(-1, 3, 9).at[:, :, 0].add(AMBIENT_OFFSET)
    # Nine broadcast multiply-adds per channel instead of a K=9 dot (see `rigid_transform`).
    return tuple(albedo[c] * sum(terms[k] * g[:, c, k] for k in range(9)) for c in range(3))


def _posed(bases: Bases, coeffs: Coeffs, camera: Camera):
    """(shape, rotations f32[B, 3, 3], vertices, uv, depth) of a batch, batch minor."""
    with jax.named_scope("bases"):  # scopes name the stages in profiles
        shape = _linear(bases.mean_shape, ((bases.id_base, coeffs.id), (bases.exp_base, coeffs.exp)))
    rot = jax.vmap(rotation_matrix)(coeffs.angle)
    vertices = tuple(p + t for p, t in zip(_rotate(shape, rot), coeffs.trans.T))
    depth = camera.distance - vertices[2]
    uv = tuple(camera.focal * p / depth + camera.center for p in vertices[:2])
    return shape, rot, vertices, uv, depth


def form_batch(bases: Bases, coeffs: Coeffs, camera: Camera = Camera()) -> Faces:
    """Face formation of a batch on the vertices of `bases`; coeffs fields f32[B, n]."""
    shape, rot, vertices, uv, depth = _posed(bases, coeffs, camera)
    with jax.named_scope("bases"):
        albedo = tuple(a / 255.0 for a in _linear(bases.mean_tex, ((bases.tex_base, coeffs.tex),)))
    with jax.named_scope("normals"):
        normals = _rotate(vertex_normals(shape, bases.mesh), rot)
    return Faces(shape, vertices, normals, albedo, shade(albedo, normals, coeffs.gamma), uv, depth)


def posed_screens(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera()):
    """Screen coordinates f32[B, V, 3] (column, top-down row, depth) of a batch from shape
    and pose alone (no normals, albedo or light): all a z-buffer needs. The same
    arithmetic as `form_batch`, so the same pixels win."""
    _, _, _, uv, depth = _posed(model_bases(model), coeffs, camera)
    return jnp.stack([uv[0], flip_row(uv[1], camera.image_size), depth], axis=-1).transpose(1, 0, 2)


# ----------------------------------------------------------------------------- per-face layout

class Face(NamedTuple):
    """Everything face formation produces, per face (V vertices; a batch adds a leading B).

    shape: f32[V, 3]      canonical (unposed) shape, decimetres
    vertices: f32[V, 3]   posed shape (R, t applied), model space
    normals: f32[V, 3]    rotated unit vertex normals
    albedo: f32[V, 3]     0-1
    colors: f32[V, 3]     lit vertex colours (not clipped)
    uv: f32[V, 2]         projected image coordinates, v pointing up
    depth: f32[V]         distance in front of the camera
    landmarks: f32[68, 2] projected keypoints, v up
    """

    shape: jnp.ndarray
    vertices: jnp.ndarray
    normals: jnp.ndarray
    albedo: jnp.ndarray
    colors: jnp.ndarray
    uv: jnp.ndarray
    depth: jnp.ndarray
    landmarks: jnp.ndarray


def per_face(faces: Faces, keypoints) -> Face:
    """The batch-minor `Faces` in the per-face layout: `Face` with a leading batch axis."""
    stack = lambda parts: jnp.stack(parts, axis=-1).transpose(1, 0, 2)  # noqa: E731  [P, B, C] -> [B, P, C]
    uv = stack(faces.uv)
    return Face(stack(faces.shape), stack(faces.vertices), stack(faces.normals), stack(faces.albedo),
                stack(faces.colors), uv, faces.depth.T, uv[:, keypoints])


@partial(jax.jit, static_argnums=2)
def form_faces(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera()) -> Face:
    """Face formation of a batch: coeffs fields f32[B, ...] -> `Face` with a leading B axis
    (jitted once per shape)."""
    return per_face(form_batch(model_bases(model), coeffs, camera), model.keypoints)


@partial(jax.jit, static_argnums=2)
def form_face(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera()) -> Face:
    """Face formation of ONE face (coeffs fields without a batch axis). Differentiable in
    reverse mode; for many faces `form_faces` runs the batch at once."""
    one = jax.tree.map(lambda x: x[None], coeffs)
    return jax.tree.map(lambda x: x[0], per_face(form_batch(model_bases(model), one, camera), model.keypoints))


def face_normals(shape, tris, point_buf):
    """Unit vertex normals f32[V, 3] of ONE shape f32[V, 3] (`normals.vertex_normals`)."""
    normals = vertex_normals(tuple(shape[:, i, None] for i in range(3)), mesh_tables(tris, point_buf))
    return jnp.concatenate(normals, axis=-1)
