"""Training and fitting losses of the PyTorch reference (SPEC "Training losses").

Each function takes ONE face's arrays; optional leading batch axes `*B` are reduced
exactly as the reference reduces its batch (the mean over the batch of the per-face
value, except `photometric_loss`, which pools all pixels of the batch like
`photo_loss`). Landmarks are in image pixels; colours are 0-1.

Reference formulas (github sicxu/Deep3DFaceRecon_pytorch, models/losses.py):
- photo_loss: sum(sqrt(eps + |A - B|^2) * mask) / max(sum(mask), 1), eps = 1e-6
- landmark_loss: sum(w * |p - q|^2) / (B * 68)
- reg_loss: (|id|^2 + 0.8 |exp|^2 + 0.017 |tex|^2) / B and mean((gamma - mean_c gamma)^2)
- reflectance_loss: sum(((tex - masked mean) * mask)^2) / (B * sum(mask))
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxface.coeffs import Coeffs
from jaxface.model.face_model import FaceModel

PHOTO_EPS = 1e-6  # keeps the sqrt differentiable at a perfect match (reference value)


def default_landmark_weights() -> np.ndarray:
    """f32[68]: 1, and 20 on the nose (one-based 29-31) and the inner lips (61-68)."""
    w = np.ones(68, np.float32)
    w[28:31] = 20.0
    w[60:68] = 20.0
    return w


LANDMARK_WEIGHTS = default_landmark_weights()


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss; defaults are the paper's / PyTorch reference's.

    `identity` needs an external face-recognition network (not part of jaxface), so it
    defaults to 0 (off); the reference trains with 0.2.
    `id_reg`, `exp_reg`, `tex_reg` are the relative weights inside `coeff_regularizer`.
    """

    photo: float = 1.92
    landmark: float = 1.6e-3
    reg: float = 3e-4
    albedo: float = 5.0
    gamma: float = 10.0
    identity: float = 0.0
    id_reg: float = 1.0
    exp_reg: float = 0.8
    tex_reg: float = 1.7e-2


def landmark_loss(pred, target, weights=None):
    """Weighted squared 2D landmark distance.

    pred, target: f32[*B, K, 2]   pixels (same convention on both sides)
    weights: f32[K] | None        default: `LANDMARK_WEIGHTS` (K = 68 required then)
    Returns f32[]: sum(w * |pred - target|^2) / (K * prod(B)).
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape or pred.shape[-1] != 2:
        raise ValueError(f"landmark_loss needs pred and target of the same shape [*B, K, 2], got {pred.shape} and {target.shape}")
    if weights is None:
        if pred.shape[-2] != 68:
            raise ValueError(f"default landmark weights are for 68 points, got {pred.shape[-2]}; pass weights f32[K]")
        weights = LANDMARK_WEIGHTS
    sq = jnp.sum((pred - target) ** 2, axis=-1) * jnp.asarray(weights, pred.dtype)
    return jnp.mean(sq)


def photometric_loss(rendered, target, mask, eps: float = PHOTO_EPS):
    """Mean over masked pixels of the L2 colour distance sqrt(eps + |rendered - target|^2).

    rendered, target: f32[*B, H, W, 3]   0-1 colours
    mask: f32[*B, H, W]                  pixel weights (1 = counted), not differentiated by design
    Returns f32[]: sum(dist * mask) / max(sum(mask), 1) over all pixels of the batch.
    """
    rendered, target, mask = jnp.asarray(rendered), jnp.asarray(target), jnp.asarray(mask)
    if rendered.shape != target.shape or rendered.shape[-1] != 3 or mask.shape != rendered.shape[:-1]:
        raise ValueError(
            f"photometric_loss needs rendered/target f32[*B, H, W, 3] and mask f32[*B, H, W]; got "
            f"{rendered.shape}, {target.shape}, {mask.shape}"
        )
    dist = jnp.sqrt(eps + jnp.sum((rendered - target) ** 2, axis=-1))
    return jnp.sum(dist * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def coeff_regularizer(coeffs: Coeffs, weights: LossWeights = LossWeights()):
    """|id|^2 + 0.8 |exp|^2 + 0.017 |tex|^2 (relative weights from `weights`), mean over *B."""
    per_face = (
        weights.id_reg * jnp.sum(coeffs.id**2, axis=-1)
        + weights.exp_reg * jnp.sum(coeffs.exp**2, axis=-1)
        + weights.tex_reg * jnp.sum(coeffs.tex**2, axis=-1)
    )
    return jnp.mean(per_face)


def albedo_regularizer(albedo, skin_mask):
    """Albedo variance on the skin: sum(((a - mean_skin(a)) * m)^2) / sum(m), mean over *B.

    albedo: f32[*B, V, 3] (0-1); skin_mask: f32[V] (1 on skin).
    The reference divides by the number of skin vertices, not 3x it; kept.
    """
    albedo, m = jnp.asarray(albedo), jnp.asarray(skin_mask, jnp.float32)
    if albedo.shape[-2:] != (m.shape[0], 3):
        raise ValueError(f"albedo must be f32[*B, V, 3] with V = len(skin_mask) = {m.shape[0]}, got {albedo.shape}")
    m = m[:, None]
    mean = jnp.sum(albedo * m, axis=-2, keepdims=True) / jnp.sum(m)
    per_face = jnp.sum(((albedo - mean) * m) ** 2, axis=(-2, -1)) / jnp.sum(m)
    return jnp.mean(per_face)


def region_mask(model: FaceModel, tri_id):
    """f32[H, W]: 1 where the z-buffer's visible triangle (tri_id i32[H, W], -1 on background)
    is one of `model.region_triangles()`, the pixels the photometric loss reads."""
    return ((tri_id >= 0) & model.region_triangles()[jnp.maximum(tri_id, 0)]).astype(jnp.float32)


def lighting_regularizer(gamma):
    """Colour variance of the SH light: mean((gamma - mean over channels)^2).

    gamma: f32[*B, 27] (3 channels x 9 coefficients, as in `Coeffs.gamma`).
    """
    gamma = jnp.asarray(gamma)
    if gamma.shape[-1] != 27:
        raise ValueError(f"gamma must be f32[*B, 27] (3 channels x 9), got {gamma.shape}")
    g = gamma.reshape(*gamma.shape[:-1], 3, 9)
    return jnp.mean((g - jnp.mean(g, axis=-2, keepdims=True)) ** 2)
