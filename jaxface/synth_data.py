"""Synthetic scenes with known coefficients: faces rendered over smooth random backgrounds.

For tests, benchmarks, demos and training sanity checks on any `FaceModel` (usually the
embedded synthetic one). All randomness comes from an explicit PRNG key.

    scene = make_scene(model, jax.random.key(0), batch=8)
    scene.images       # f32[8, 224, 224, 3] top-down, 0-1
    scene.landmarks    # f32[8, 68, 2] top-down crop pixels, with detector-like noise
    scene.coeffs       # the ground truth
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import flip_y
from jaxface.model.face_model import FaceModel
from jaxface.render import render_faces


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Distributions of the random coefficients (model units: radians, decimetres).

    id, exp, tex ~ N(0, scale^2) per coefficient (bases carry the eigenvalues, so 1 is
    one standard deviation). Angles uniform in +-max (degrees). Light: a mostly
    monochromatic SH vector (ambient offset, first and second order) plus a small
    per-channel tint. Translation uniform in +-max. Landmark noise is Gaussian, pixels.
    """

    id_scale: float = 1.0
    exp_scale: float = 0.7
    tex_scale: float = 1.0
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 10.0
    max_roll_deg: float = 10.0
    ambient: tuple[float, float] = (-0.1, 0.3)  # added to the 0.8 offset of coefficient 0
    first_order: float = 0.2
    second_order: float = 0.08
    tint: float = 0.03
    max_shift: float = 0.08  # x, y translation, decimetres (8 px at the default camera)
    max_depth: float = 0.3  # z translation, decimetres (+-3% scale)
    landmark_noise_px: float = 1.5
    background_cells: int = 6  # control points per side of the smooth background noise


class Scene(NamedTuple):
    """B synthetic photos with their ground truth.

    coeffs: Coeffs[B]             true coefficients
    images: f32[B, S, S, 3]       renders over `backgrounds`, top-down, 0-1 (S = camera.image_size)
    masks: f32[B, S, S]           1 where the face covers the pixel
    landmarks: f32[B, 68, 2]      noisy landmarks, top-down crop pixels (x = column, y = row)
    true_landmarks: f32[B, 68, 2] noise-free projected landmarks, top-down
    shapes: f32[B, V, 3]          canonical (unposed) shapes, decimetres
    """

    coeffs: Coeffs
    images: jnp.ndarray
    masks: jnp.ndarray
    landmarks: jnp.ndarray
    true_landmarks: jnp.ndarray
    shapes: jnp.ndarray


def sample_coeffs(key, batch: int, config: SceneConfig = SceneConfig(), shared_identity: bool = False) -> Coeffs:
    """Random coefficients Coeffs[batch]; with `shared_identity` all faces get the same id and tex
    (one person photographed `batch` times with different expression, pose and light)."""
    k = jax.random.split(key, 9)
    n = 1 if shared_identity else batch

    def normal(key, shape, scale):
        return scale * jax.random.normal(key, shape, jnp.float32)

    ident = jnp.broadcast_to(normal(k[0], (n, 80), config.id_scale), (batch, 80))
    tex = jnp.broadcast_to(normal(k[1], (n, 80), config.tex_scale), (batch, 80))
    exp = normal(k[2], (batch, 64), config.exp_scale)
    max_angle = jnp.deg2rad(jnp.array([config.max_pitch_deg, config.max_yaw_deg, config.max_roll_deg]))
    angle = jax.random.uniform(k[3], (batch, 3), minval=-1.0, maxval=1.0) * max_angle
    sh = jnp.concatenate(
        [
            jax.random.uniform(k[4], (batch, 1), minval=config.ambient[0], maxval=config.ambient[1]),
            normal(k[5], (batch, 3), config.first_order),
            normal(k[6], (batch, 5), config.second_order),
        ],
        axis=1,
    )
    gamma = (sh[:, None, :] + normal(k[7], (batch, 3, 9), config.tint)).reshape(batch, 27)
    box = jnp.array([config.max_shift, config.max_shift, config.max_depth])
    trans = jax.random.uniform(k[8], (batch, 3), minval=-1.0, maxval=1.0) * box
    return Coeffs(ident, exp, tex, angle, gamma, trans)


def smooth_backgrounds(key, batch: int, size: int, cells: int = 6):
    """f32[batch, size, size, 3] smooth colour noise: random control points, bicubic upsampling."""
    grid = jax.random.uniform(key, (batch, cells, cells, 3))
    return jnp.clip(jax.image.resize(grid, (batch, size, size, 3), "cubic"), 0.0, 1.0)


def make_scene(
    model: FaceModel,
    key,
    batch: int = 4,
    config: SceneConfig = SceneConfig(),
    camera: Camera = Camera(),
    coeffs: Coeffs | None = None,
    shared_identity: bool = False,
) -> Scene:
    """Render `batch` random faces (or the given `coeffs`) over random smooth backgrounds.

    The landmark noise and the backgrounds are drawn from `key` as well, so one key gives
    one reproducible scene.
    """
    k_coeffs, k_bg, k_noise = jax.random.split(key, 3)
    if coeffs is None:
        coeffs = sample_coeffs(k_coeffs, batch, config, shared_identity)
    batch = coeffs.batch_shape[0]
    size = camera.image_size
    backgrounds = smooth_backgrounds(k_bg, batch, size, config.background_cells)
    images, masks, true_lm, shapes = _render_scene(model, coeffs, backgrounds, camera)
    noisy = true_lm + config.landmark_noise_px * jax.random.normal(k_noise, true_lm.shape)
    return Scene(coeffs, images, masks, noisy, true_lm, shapes)


@partial(jax.jit, static_argnames=("camera",))
def _render_scene(model, coeffs, backgrounds, camera):
    """(images, masks, top-down landmarks, canonical shapes) of a batch; compiled once per shape."""
    faces, out = render_faces(model, coeffs, camera, backgrounds)
    return out.composite, out.mask, flip_y(faces.landmarks, camera.image_size), faces.shape


def to_uint8(images) -> np.ndarray:
    """f32 0-1 images -> u8 (what a photo loader would give)."""
    return np.asarray(jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0)).astype(np.uint8)
