"""Face chips for recognition networks: a similarity transform from five landmarks onto the
network's template, and a differentiable bilinear warp (gradients flow into the image).

Five points in jaxface's order (`conventions.five_from_68`): left eye centre, right eye
centre, nose tip, left and right mouth corner, top-down pixels (x = column, y = row, pixel
centres at integers, as dlib and kornia's align_corners warps use).

- dlib (`get_face_chip_details`, 150 px, padding 0.25): the template is dlib's mean face
  shape (dlib/image_transforms/interpolation.h) reduced to the five points by the same rule
  as the landmarks; the transform maps chip -> image, fitted in that direction as dlib does.
- ArcFace (insightface's 112 px template, as Deep3DFaceRecon_pytorch's `estimate_norm`): the
  transform is fitted image -> chip and inverted for sampling, as `kornia.warp_affine` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.conventions import five_from_68

# dlib's mean face shape, points 36, 39, 42, 45 (eye corners), 30 (nose tip), 48, 54 (mouth
# corners) of the 68-point layout, in dlib's normalized [0, 1] face box.
_DLIB_MEAN_FACE = {36: (0.121737, 0.216423), 39: (0.334606, 0.231733), 42: (0.645647, 0.231733),
                   45: (0.858516, 0.216423), 30: (0.490127, 0.515625), 48: (0.254149, 0.780233),
                   54: (0.726104, 0.780233)}
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def dlib_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """f32[5, 2]: the five points in a dlib face chip of `size` pixels with `padding`."""
    m = _DLIB_MEAN_FACE
    unit = np.array([np.mean([m[36], m[39]], 0), np.mean([m[42], m[45]], 0), m[30], m[48], m[54]])
    return ((padding + unit) / (2 * padding + 1) * size).astype(np.float32)


def five_points(landmarks):
    """f32[B, 5, 2] from landmarks f32[B, 68 | 5, 2]."""
    if landmarks.shape[-2] == 68:
        return five_from_68(landmarks)
    if landmarks.shape[-2] != 5:
        raise ValueError(f"landmarks must be [B, 68 | 5, 2], got {landmarks.shape}")
    return landmarks


def similarity(src, dst):
    """f32[..., 2, 3] least-squares similarity (rotation, uniform scale, shift; no reflection)
    taking src f32[..., K, 2] onto dst f32[..., K, 2]."""
    mu_s, mu_d = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    s, d = src - mu_s, dst - mu_d
    norm = jnp.maximum(jnp.sum(s * s, axis=(-2, -1)), 1e-12)
    a = jnp.sum(s * d, axis=(-2, -1)) / norm
    b = jnp.sum(s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0], axis=-1) / norm
    rot = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)
    shift = mu_d[..., 0, :] - jnp.einsum("...ij,...j->...i", rot, mu_s[..., 0, :])
    return jnp.concatenate([rot, shift[..., None]], -1)


def invert(m):
    """The inverse of similarity maps f32[..., 2, 3] (rotation part [[a, -b], [b, a]]); a
    degenerate map (all landmarks on one point) gives a finite one that samples off the image."""
    a, b = m[..., 0, 0], m[..., 1, 0]
    det = jnp.maximum(a * a + b * b, 1e-12)
    rot = jnp.stack([jnp.stack([a, b], -1), jnp.stack([-b, a], -1)], -2) / det[..., None, None]
    return jnp.concatenate([rot, -jnp.einsum("...ij,...j->...i", rot, m[..., 2])[..., None]], -1)


def warp(images, chip_to_image, size: int):
    """Chips f32[B, size, size, C]: images f32[B, H, W, C] bilinearly sampled at
    chip_to_image f32[B, 2, 3] @ (column, row, 1) of every chip pixel; 0 outside the image."""
    rows, cols = jnp.mgrid[:size, :size].astype(jnp.float32)
    grid = jnp.stack([cols, rows, jnp.ones_like(cols)])  # [3, size, size]

    def one(image, m):
        x, y = jnp.einsum("ij,jhw->ihw", m, grid)
        sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [y, x], order=1, mode="constant")  # noqa: E731
        return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images, chip_to_image)


def chip_transform(landmarks, template, fit_to_image: bool):
    """f32[B, 2, 3] chip -> image maps for landmarks f32[B, 68 | 5, 2] and a template f32[5, 2].

    fit_to_image: fit chip -> image (dlib); else fit image -> chip and invert (insightface)."""
    points = five_points(jnp.asarray(landmarks, jnp.float32))
    template = jnp.broadcast_to(jnp.asarray(template, jnp.float32), points.shape)
    return similarity(template, points) if fit_to_image else invert(similarity(points, template))
