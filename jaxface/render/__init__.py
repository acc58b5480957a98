"""Differentiable rendering from jax primitives: rasterize -> interpolate -> composite."""

from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import Fragments, rasterize
from jaxface.render.renderer import RenderOutput, render, render_mesh

__all__ = ["Fragments", "RenderOutput", "interpolate", "rasterize", "render", "render_mesh"]
