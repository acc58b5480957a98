"""Overlays: the rendering blended on the photo, landmarks drawn, saved as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxface.outputs.files import check_array
from jaxface.outputs.paths import atomic_output


def blend_overlay(image: np.ndarray, rendering: np.ndarray, mask: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """u8[H, W, 3]: photo * (1 - w) + 255 * rendering * w, with w = alpha * clip(mask, 0, 1), rounded.

    alpha = 1 is the PyTorch reference's visualisation (rendering replaces the covered pixels).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"overlay image is {img.dtype}{list(img.shape)}; expected uint8[H, W, 3] RGB")
    h, w = img.shape[:2]
    ren = check_array("rendering", rendering, (h, w, 3))
    m = check_array("mask", mask, (h, w))
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is {alpha}; expected 0-1")
    wgt = (np.float32(alpha) * np.clip(m, 0, 1))[..., None]
    out = img.astype(np.float32) * (1 - wgt) + np.clip(ren, 0, 1) * np.float32(255) * wgt
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, color=(255, 0, 0), radius: int | None = None) -> np.ndarray:
    """A copy of u8[H, W, 3] with filled dots at landmarks f32[N, 2] (pixel x right, y down).

    Sub-pixel centres (cv2 fixed-point shift); the radius defaults to about 1/300 of the
    larger side (at least 1 px). Dots outside the image are clipped away.
    """
    import cv2

    pts = check_array("landmarks", landmarks, (None, 2), np.float64)
    h, w = image.shape[:2]
    r = max(1, round(max(h, w) / 300)) if radius is None else int(radius)
    out = np.ascontiguousarray(image).copy()
    shift = 4
    for x, y in np.rint(pts * (1 << shift)).astype(np.int64):
        if abs(x) < 1 << 30 and abs(y) < 1 << 30:  # cv2 takes 32-bit coordinates
            cv2.circle(out, (int(x), int(y)), r << shift, tuple(int(c) for c in color), -1, cv2.LINE_AA, shift)
    return out


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    rendering: np.ndarray,
    mask: np.ndarray,
    landmarks: np.ndarray | None = None,
    alpha: float = 1.0,
) -> Path:
    """Write the rendering blended over the photo (`blend_overlay`) with landmark dots, as PNG.

    image: u8[H, W, 3] RGB   rendering: f32[H, W, 3] 0-1   mask: f32[H, W] 0-1
    landmarks: f32[N, 2] | None   pixel coordinates, x right, y down
    """
    out = blend_overlay(image, rendering, mask, alpha)
    if landmarks is not None:
        out = draw_landmarks(out, landmarks)
    return save_png(path, out)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write u8[H, W, 3] RGB as a PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))  # cv2 encodes BGR
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path
