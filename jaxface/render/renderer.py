"""Render a face (or any vertex-coloured mesh): rasterize, interpolate colours, composite."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxface.camera import Camera
from jaxface.coeffs import LAYOUT, Coeffs
from jaxface.formation import Face, form_face, form_faces, posed_screens, screen_coords
from jaxface.model.face_model import FaceModel
from jaxface.render.barycentric import pixel_barycentrics
from jaxface.render.interpolate import blend
from jaxface.render.rasterize import Fragments, check_mesh, check_size, triangle_ids


class RenderOutput(NamedTuple):
    """One rendered H x W image (top-down rows).

    image: f32[H, W, 3]       interpolated vertex colours clipped to 0-1; 0 (black) where no face
    mask: f32[H, W]           1 on covered pixels, 0 elsewhere (not differentiable)
    fragments: Fragments      the z-buffer (triangle ids, barycentrics, depth)
    composite: f32[H, W, 3] | None   image over `background` (None when none was given)
    """

    image: jnp.ndarray
    mask: jnp.ndarray
    fragments: Fragments
    composite: Optional[jnp.ndarray]


def render_mesh(verts_screen, colors, tris, height: int, width: int, background=None) -> RenderOutput:
    """Render one vertex-coloured mesh.

    verts_screen: f32[V, 3]   (x = column, y = top-down row, camera depth)
    colors: f32[V, 3]         vertex colours, nominally 0-1 (clipped only in the output image)
    tris: i32[T, 3]           zero-based
    background: f32[H, W, 3] | None   0-1 image to composite the render over
    Differentiable w.r.t. `verts_screen` (inside triangles) and `colors`. Batch with jax.vmap.
    """
    check_mesh(verts_screen, tris)
    height, width = check_size(height, width)
    if jnp.shape(colors) != (jnp.shape(verts_screen)[0], 3):
        raise ValueError(f"colors must be f32[V, 3] = {(jnp.shape(verts_screen)[0], 3)}, got {jnp.shape(colors)}")
    _check_background(background, height, width)
    return _render_mesh(verts_screen, colors, tris, height, width, background)


@partial(jax.jit, static_argnames=("height", "width"))
def _render_mesh(verts_screen, colors, tris, height, width, background) -> RenderOutput:
    tri_id = triangle_ids(verts_screen, tris, height, width)
    # Barycentrics once, differentiably; the fragments get a gradient-stopped copy.
    bary, depth = pixel_barycentrics(verts_screen, tris, tri_id)
    rgb = blend(colors, tris, tri_id, bary)
    fragments = Fragments(tri_id, jax.lax.stop_gradient(jnp.moveaxis(bary, 0, -1)), jax.lax.stop_gradient(depth))
    mask = (tri_id >= 0).astype(rgb.dtype)
    image = jnp.clip(rgb, 0.0, 1.0) * mask[..., None]
    composite = None
    if background is not None:
        composite = image + (1.0 - mask[..., None]) * background
    return RenderOutput(image, mask, fragments, composite)


def render(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera(), background=None) -> RenderOutput:
    """Render ONE face (coefficient fields without a batch axis) at camera.image_size squared.

    Face formation (shape, pose, SH-lit vertex colours, projection) is `form_face`; the
    mesh goes through `render_mesh`. For a batch, `render_faces` forms all faces at once.
    """
    for name, width in LAYOUT:
        shape = jnp.shape(getattr(coeffs, name))
        if shape != (width,):
            raise ValueError(
                f"coeffs.{name} has shape {shape}, expected ({width},) for one face; "
                "for a batch use jaxface.render.render_faces"
            )
    _check_background(background, camera.image_size, camera.image_size)
    return _render(model, coeffs, camera, background)


@partial(jax.jit, static_argnames=("camera",))
def _render(model, coeffs, camera, background) -> RenderOutput:
    face = form_face(model, coeffs, camera)
    verts = screen_coords(face.uv, face.depth, camera)
    size = camera.image_size
    return _render_mesh(verts, face.colors, model.tris, size, size, background)


@partial(jax.jit, static_argnames=("camera",))
def render_faces(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera(), backgrounds=None) -> tuple[Face, RenderOutput]:
    """Form and render a batch (coeffs fields f32[B, n]) in one program: (`Face` and
    `RenderOutput`, each with a leading B axis). backgrounds: f32[B, S, S, 3] | None."""
    face = form_faces(model, coeffs, camera)
    size = camera.image_size
    verts = jax.vmap(screen_coords, in_axes=(0, 0, None))(face.uv, face.depth, camera)
    draw = lambda v, c, bg: _render_mesh(v, c, model.tris, size, size, bg)  # noqa: E731
    return face, jax.vmap(draw)(verts, face.colors, backgrounds)


def z_buffers(model: FaceModel, coeffs: Coeffs, camera: Camera = Camera()):
    """The z-buffers alone, i32[B, S, S] triangle ids (-1 on background), of a batch
    (coeffs fields f32[B, n]) from shape and pose (no normals, shading or barycentrics)."""
    size = camera.image_size
    return jax.vmap(lambda v: triangle_ids(v, model.tris, size, size))(posed_screens(model, coeffs, camera))


def _check_background(background, height, width):
    if background is not None and jnp.shape(background) != (height, width, 3):
        raise ValueError(
            f"background must be f32[H, W, 3] = {(height, width, 3)} (0-1, top-down), got {jnp.shape(background)}"
        )
