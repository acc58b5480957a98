"""Differentiable rendering from jax primitives: rasterize (z-buffer) -> barycentrics ->
interpolate -> composite; `interpolate_samples` for a list of pixel samples of a batch."""

from jaxface.render.interpolate import Samples, batch_samples, interpolate, interpolate_samples, pixel_samples
from jaxface.render.rasterize import Fragments, rasterize, triangle_ids
from jaxface.render.renderer import RenderOutput, z_buffers, render, render_faces, render_mesh

__all__ = ["Fragments", "RenderOutput", "Samples", "batch_samples", "interpolate",
           "interpolate_samples", "pixel_samples", "rasterize", "render", "render_faces", "render_mesh", "triangle_ids", "z_buffers"]
