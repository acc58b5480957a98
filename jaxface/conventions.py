"""Conventions shared by every stage: crop size, image y-flip, landmark subsets and weights.

- Crops are CROP_SIZE x CROP_SIZE RGB, rows top-down (the network input, SPEC "Alignment").
- The camera's image coordinate v points up; images and landmark files count rows down.
  `flip_y` maps one to the other (y' = size - 1 - y, its own inverse).
- 68 landmarks follow the iBUG 300-W layout (one-based ids below, as in the references).
  The five detections are combinations of them (`FIVE_FROM_68`): left eye = mean(37, 40),
  right eye = mean(43, 46), nose 31, mouth corners 49 / 55 (the alignment template rule).
- Landmark loss weights: 1, and 20 on the nose (29-31) and inner lips (61-68); five points
  keep their 68-point weights (the nose 20).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

CROP_SIZE = 224
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# Rows of the 5-point layout as one-based 68-point ids: left eye, right eye, nose, left
# mouth corner, right mouth corner.
FIVE_FROM_68 = ((37, 40), (43, 46), (31,), (49,), (55,))


def _five_matrix() -> np.ndarray:
    m = np.zeros((5, 68), np.float32)
    for row, ids in enumerate(FIVE_FROM_68):
        m[row, np.asarray(ids) - 1] = 1.0 / len(ids)
    return m


FIVE_MATRIX = _five_matrix()  # f32[5, 68]: five = FIVE_MATRIX @ lm68


def _landmark_weights() -> np.ndarray:
    w = np.ones(68, np.float32)
    w[28:31] = 20.0
    w[60:68] = 20.0
    return w


LANDMARK_WEIGHTS = _landmark_weights()  # f32[68]
FIVE_POINT_WEIGHTS = np.array([1.0, 1.0, 20.0, 1.0, 1.0], np.float32)


def flip_row(y, size: int = CROP_SIZE):
    """A y coordinate counted up <-> a row counted down: y' = size - 1 - y (any array)."""
    return size - 1 - y


def flip_y(points, size: int = CROP_SIZE):
    """Points f[..., 2] (x, y) with `flip_row` applied to y.

    numpy in, numpy out (float64 for integer input); jax arrays stay jax arrays."""
    if isinstance(points, np.ndarray) or np.isscalar(points) or isinstance(points, (list, tuple)):
        p = np.array(points, np.result_type(np.asarray(points).dtype, np.float32), copy=True)
        p[..., 1] = flip_row(p[..., 1], size)
        return p
    return jnp.stack([points[..., 0], flip_row(points[..., 1], size)], axis=-1)


def five_from_68(lm68):
    """f[*B, 68, D] -> f[*B, 5, D] by the template rule (`FIVE_FROM_68`); numpy or jax."""
    xp = np if isinstance(lm68, np.ndarray) else jnp
    return xp.stack([xp.mean(lm68[..., [i - 1 for i in ids], :], axis=-2) for ids in FIVE_FROM_68], axis=-2)


def landmark_layout(lm68, num: int):
    """Model landmarks f[*B, 68, 2] in the layout of `num` (68 or 5) target points."""
    if num == 68:
        return lm68
    if num == 5:
        return five_from_68(lm68)
    raise ValueError(f"landmarks must have 68 or 5 points, got {num}")


def landmark_weights(num: int) -> np.ndarray:
    """f32[num]: `LANDMARK_WEIGHTS` for 68 points, `FIVE_POINT_WEIGHTS` for 5."""
    if num not in (5, 68):
        raise ValueError(f"landmarks must have 68 or 5 points, got {num}")
    return LANDMARK_WEIGHTS if num == 68 else FIVE_POINT_WEIGHTS
