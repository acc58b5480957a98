"""A synthetic clip with known, smooth coefficient trajectories (tests, benchmarks, notebooks).

One person (one id and tex) turns the head (sinusoidal pitch, yaw and roll), changes
expression smoothly (each expression coefficient a sinusoid with its own period and phase)
and drifts slightly, under one light (coefficients drawn as `synth_data.sample_coeffs` draws
them). Frames are renders composited over one fixed smooth background, the 224 x 224 render
at the centre of a larger canvas; landmarks get Gaussian noise per frame, as a detector would
give. All randomness comes from the key.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import CROP_SIZE, flip_y
from jaxface.model.face_model import FaceModel
from jaxface.render import render_faces
from jaxface.synth_data import SceneConfig, sample_coeffs, smooth_backgrounds, to_uint8


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """The clip's trajectories (degrees, coefficient units, decimetres, pixels).

    frames: clip length; period: frames per full head oscillation; pitch/yaw/roll: amplitudes;
    exp_scale: standard deviation of each expression coefficient's amplitude; exp_period:
    (shortest, longest) expression period in frames; drift: x, y translation amplitude;
    canvas: (H, W) of the frames (the 224 x 224 render is pasted at the centre);
    scene: identity, albedo and light distributions and the landmark noise (`SceneConfig`).
    """

    frames: int = 48
    period: float = 48.0
    pitch: float = 8.0
    yaw: float = 25.0
    roll: float = 5.0
    exp_scale: float = 0.7
    exp_period: tuple[float, float] = (24.0, 64.0)
    drift: float = 0.03
    canvas: tuple[int, int] = (256, 320)
    scene: SceneConfig = SceneConfig()


class SyntheticClip(NamedTuple):
    """frames: u8[F, H, W, 3] RGB; landmarks: f32[F, 68, 2] noisy, frame pixels (y down);
    true_landmarks: f32[F, 68, 2] noise-free; coeffs: Coeffs[F] the truth; fps: float."""

    frames: np.ndarray
    landmarks: np.ndarray
    true_landmarks: np.ndarray
    coeffs: Coeffs
    fps: float


def clip_coeffs(key, config: ClipConfig = ClipConfig()) -> Coeffs:
    """Coeffs[frames]: one id, tex and light; smooth pose, expression and translation."""
    k_base, k_exp, k_phase, k_period = jax.random.split(key, 4)
    base = sample_coeffs(k_base, 1, config.scene)
    n = config.frames
    t = jnp.arange(n, dtype=jnp.float32)[:, None]
    w = 2 * jnp.pi / config.period
    amp = jnp.deg2rad(jnp.array([config.pitch, config.yaw, config.roll]))
    angle = amp * jnp.sin(w * t + jnp.array([0.7, 0.0, 1.9]))
    trans = jnp.concatenate([config.drift * jnp.sin(0.5 * w * t + jnp.array([0.3, 1.1])), jnp.zeros((n, 1))], axis=1)
    lo, hi = config.exp_period
    periods = jax.random.uniform(k_period, (64,), minval=lo, maxval=hi)
    phase = jax.random.uniform(k_phase, (64,), maxval=2 * jnp.pi)
    exp = config.exp_scale * jax.random.normal(k_exp, (64,)) * jnp.sin(2 * jnp.pi * t / periods + phase)
    tile = lambda x: jnp.broadcast_to(x, (n, x.shape[1]))  # noqa: E731
    return Coeffs(tile(base.id), exp, tile(base.tex), angle, tile(base.gamma), trans)


def make_clip(model: FaceModel, key, config: ClipConfig = ClipConfig(), batch: int = 16) -> SyntheticClip:
    """Render the clip of `clip_coeffs(key, config)` (see the module docstring), `batch` frames
    per `render_faces` call (the program `jaxface.video` overlays use at the same batch)."""
    k_coeffs, k_noise, k_bg = jax.random.split(key, 3)
    coeffs = clip_coeffs(k_coeffs, config)
    h, w = config.canvas
    if h < CROP_SIZE or w < CROP_SIZE:
        raise ValueError(f"canvas must be at least {CROP_SIZE} x {CROP_SIZE}, got {config.canvas}")
    n = config.frames
    background = np.asarray(smooth_backgrounds(k_bg, 1, max(h, w), config.scene.background_cells)[0, :h, :w])
    oy, ox = (h - CROP_SIZE) // 2, (w - CROP_SIZE) // 2
    frames = np.empty((n, h, w, 3), np.float32)
    frames[:] = background
    true_lm = np.empty((n, 68, 2), np.float32)
    for start in range(0, n, batch):
        idx = np.minimum(np.arange(start, start + batch), n - 1)
        face, out = render_faces(model, Coeffs(*(x[idx] for x in coeffs)), Camera())
        m = min(batch, n - start)
        mask = np.asarray(out.mask)[:m, ..., None]
        window = frames[start:start + m, oy:oy + CROP_SIZE, ox:ox + CROP_SIZE]
        window[:] = np.asarray(out.image)[:m] * mask + window * (1 - mask)
        true_lm[start:start + m] = flip_y(np.asarray(face.landmarks)[:m])
    true_lm += np.array([ox, oy], np.float32)
    noisy = true_lm + config.scene.landmark_noise_px * np.asarray(jax.random.normal(k_noise, true_lm.shape))
    return SyntheticClip(to_uint8(frames), noisy.astype(np.float32), true_lm, coeffs, 25.0)
