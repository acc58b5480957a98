"""Every loss term of training and fitting (SPEC "Training losses") and the one objective.

Each term takes ONE face's arrays; optional leading batch axes `*B` are reduced
exactly as the reference reduces its batch (the mean over the batch of the per-face
value, except `photometric_loss`, which pools all pixels of the batch like
`photo_loss`). Landmarks are in image pixels; colours are 0-1. The `*_per_image`
forms keep the batch axis for fitting, where every image is its own problem.
`objective(terms, weights)` weighs and sums the terms; `fit` and `train` both call it.

Reference formulas (github sicxu/Deep3DFaceRecon_pytorch, models/losses.py):
- photo_loss: sum(sqrt(eps + |A - B|^2) * mask) / max(sum(mask), 1), eps = 1e-6
- landmark_loss: sum(w * |p - q|^2) / (B * 68)
- reg_loss: (|id|^2 + 0.8 |exp|^2 + 0.017 |tex|^2) / B and mean((gamma - mean_c gamma)^2)
- reflectance_loss: sum(((tex - masked mean) * mask)^2) / (B * sum(mask))
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxface import conventions
from jaxface.coeffs import Coeffs
from jaxface.conventions import LANDMARK_WEIGHTS
from jaxface.model.face_model import FaceModel

PHOTO_EPS = 1e-6  # keeps the sqrt differentiable at a perfect match (reference value)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss; defaults are the paper's / PyTorch reference's.

    `identity` is 0 (off) here: the term needs a face-recognition network, and passing one
    (`jaxface.identity`, to `train` or `fit`) sets its weight (0.2, the reference's).
    `id_reg`, `exp_reg`, `tex_reg` are the relative weights inside `coeff_regularizer`.
    `coeffs` weighs the supervised coefficient loss of synthetic pre-training.
    A pytree of its values: passed to a jitted function as an argument, new weights do not
    recompile it.
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
    coeffs: float = 1.0


# The terms `objective` knows, each weighted by the LossWeights field of the same name.
TERMS = ("photo", "landmark", "reg", "albedo", "gamma", "identity", "coeffs")


def objective(terms: Mapping[str, jax.Array], weights: LossWeights):
    """sum over terms of weight * term, the weight being `weights.<name>`.

    terms: {name: f32[*B]} unweighted values (scalars for a training batch, f32[B] per image
    when fitting); every name must be one of `TERMS`. Returns f32[*B].
    """
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; terms are {TERMS}")
    return sum(getattr(weights, name) * value for name, value in terms.items())


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


def landmark_term(pred68, target):
    """`landmark_loss` of predicted 68 points f32[*B, 68, 2] against 68 or 5 target points
    f32[*B, K, 2] (same convention on both sides): the model points are first put in the
    targets' layout (`conventions.landmark_layout`), with that layout's weights."""
    num = target.shape[-2]
    return landmark_loss(conventions.landmark_layout(pred68, num), target, conventions.landmark_weights(num))


def coeff_prior(coeffs: Coeffs, weights: LossWeights = LossWeights(), groups=("id", "exp", "tex")):
    """Per face f32[*B]: id_reg |id|^2 + exp_reg |exp|^2 + tex_reg |tex|^2 over `groups`."""
    scale = {"id": weights.id_reg, "exp": weights.exp_reg, "tex": weights.tex_reg}
    return sum(scale[g] * jnp.sum(getattr(coeffs, g) ** 2, axis=-1) for g in groups)


def coeff_regularizer(coeffs: Coeffs, weights: LossWeights = LossWeights()):
    """|id|^2 + 0.8 |exp|^2 + 0.017 |tex|^2 (relative weights from `weights`), mean over *B."""
    return jnp.mean(coeff_prior(coeffs, weights))


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


class AlbedoPrior(NamedTuple):
    """`albedo_regularizer` as a quadratic form of the albedo coefficients t:
    (const + 2 lin . t + t^T gram t) / total (`albedo_prior`).

    gram: f32[80, 80]; lin: f32[80]; const, total: f32[]
    """

    gram: jnp.ndarray
    lin: jnp.ndarray
    const: jnp.ndarray
    total: jnp.ndarray


def albedo_prior(model: FaceModel, skin) -> AlbedoPrior:
    """The albedo regularizer's form from the skin rows (skin: i32[S] vertex ids holding every
    nonzero of `skin_mask`). The albedo is linear in t, so its skin variance is quadratic:
    evaluating it (`albedo_regularizer_per_image`) then needs no per-vertex pass."""
    m = model.skin_mask[skin]
    total = jnp.sum(m)
    basis = model.tex_base[skin] / 255.0  # [S, 3, 80]
    mean = model.mean_tex[skin] / 255.0  # [S, 3]
    # Centred on the weighted skin mean; the reference squares (a - mean) * m.
    centred_basis = basis - jnp.sum(basis * m[:, None, None], axis=0) / total
    centred_mean = mean - jnp.sum(mean * m[:, None], axis=0) / total
    w = (m * m)[:, None]
    hi = jax.lax.Precision.HIGHEST
    gram = sum(jnp.dot(centred_basis[:, c].T, w * centred_basis[:, c], precision=hi) for c in range(3))
    lin = sum(jnp.dot(centred_basis[:, c].T, w[:, 0] * centred_mean[:, c], precision=hi) for c in range(3))
    return AlbedoPrior(gram, lin, jnp.sum(w * centred_mean**2), total)


def albedo_regularizer_per_image(prior: AlbedoPrior, tex):
    """`albedo_regularizer` of the albedo of coefficients tex f32[*B, 80], per face f32[*B]."""
    quad = jnp.sum((tex @ prior.gram) * tex, axis=-1)
    return (prior.const + 2.0 * tex @ prior.lin + quad) / prior.total


def photometric_per_image(rendered, target, weight, eps: float = PHOTO_EPS):
    """`photometric_loss` at pixel samples, per image: f32[B].

    rendered, target: (r, g, b), each f32[B, K] (rendered is clipped to 0-1 here, as the
    renderer clips its image); weight: f32[B, K] each image's sample weights (summing to 1
    over its real samples, 0 on padding; `render.Samples`).
    """
    sq = sum((jnp.clip(r, 0.0, 1.0) - t) ** 2 for r, t in zip(rendered, target))
    return jnp.sum(jnp.sqrt(eps + sq) * weight, axis=-1)


def second_difference(x, valid):
    """Temporal roughness of a sequence: sum over t of |x[t+1] - 2 x[t] + x[t-1]|^2 where the
    three frames are valid. x: f32[T, n] in time order; valid: bool[T]. Returns f32[]."""
    d = x[2:] - 2.0 * x[1:-1] + x[:-2]
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    return jnp.sum(jnp.where(ok[:, None], d * d, 0.0))


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
