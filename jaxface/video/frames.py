"""Per-frame landmarks and alignment for a clip, streamed: frames are read once and only the
224 x 224 crops are kept.

Each frame's crop comes from `align.align_image` on five points averaged over the valid
frames within +-`smoothing` frames (a steady crop: per-frame alignment would shake with the
landmark noise, and that shake would reach the frame-space results); the frame's own
landmarks are then mapped into that crop. Frames without a usable face keep a reason.

Crop geometry: the references round the resized image size and the crop box to whole pixels,
so their crop moves in jumps of up to a pixel as the scale and position glide, and a smooth
track in the crop becomes a jumpy one in the frame. Video crops use the same parameters
`trans_params = [W, H, s, tx, ty]` without the rounding: crop pixel (c, r) shows frame point
x = (c - 112) / s + tx, y = H - 1 - ((223 - r - 112) / s + ty) (the reference's landmark
formula with W s and H s unrounded). They are resampled from `align_image`'s crop (bilinear,
a shift and scale of under a pixel), which keeps its antialiased resize.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from jaxface import align
from jaxface.conventions import CROP_SIZE, five_from_68

NO_FACE = "no face"


class AlignedClip(NamedTuple):
    """F frames, aligned. crops: u8[F, 224, 224, 3]; landmarks: f32[F, K, 2] crop pixels,
    top-down (NaN where no face); trans_params: f64[F, 5] (NaN where no face); valid: bool[F];
    reasons: tuple[str] ("ok" or why the frame has no face); size: (H, W) of the frames."""

    crops: np.ndarray
    landmarks: np.ndarray
    trans_params: np.ndarray
    valid: np.ndarray
    reasons: tuple
    size: tuple


def _crop_affine(trans_params) -> np.ndarray:
    """f64[2, 3] mapping frame pixels (x, y down) to steady-crop pixels (c, r down)."""
    _, h0, s, tx, ty = (float(v) for v in trans_params)
    half = CROP_SIZE / 2
    # c = (x - tx) s + half; r = (size - 1) - ((h0 - 1 - y - ty) s + half)
    return np.array([[s, 0.0, half - tx * s], [0.0, s, CROP_SIZE - 1 - half - (h0 - 1 - ty) * s]])


def to_crop(points, trans_params) -> np.ndarray:
    """Frame pixels f[..., 2] (y down) -> steady-crop pixels f64[..., 2] (top-down rows)."""
    m = _crop_affine(trans_params)
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def to_frame(points, trans_params) -> np.ndarray:
    """Steady-crop pixels f[..., 2] (top-down rows) -> frame pixels f64[..., 2] (y down)."""
    m = _crop_affine(trans_params)
    return (np.asarray(points, np.float64) - m[:, 2]) / np.diag(m[:, :2])


def warp_to_frame(rendering, mask, trans_params) -> tuple[np.ndarray, np.ndarray]:
    """A crop rendering f[224, 224, 3] and mask f[224, 224] placed in the frame: (f32[H, W, 3], f32[H, W])."""
    import cv2

    w0, h0 = int(trans_params[0]), int(trans_params[1])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    m = _crop_affine(trans_params)
    out = cv2.warpAffine(np.asarray(rendering, np.float32), m, (w0, h0), flags=flags, borderValue=0.0)
    return out, cv2.warpAffine(np.asarray(mask, np.float32), m, (w0, h0), flags=flags, borderValue=0.0)


def _steady_crop(crop, trans_params) -> np.ndarray:
    """`align_image`'s crop u8[224, 224, 3] resampled onto the unrounded geometry."""
    import cv2

    w0, h0, s, tx, ty = (float(v) for v in trans_params)
    w, h, left, up = align._crop_geometry(trans_params, CROP_SIZE)  # the rounded geometry align_image cropped with
    # steady-crop pixel -> frame pixel -> pixel of the rounded crop (resized pixel centres at (x + 0.5) w / w0 - 0.5)
    steady = np.array([[1 / s, 0.0, tx - (CROP_SIZE / 2) / s],
                       [0.0, 1 / s, h0 - 1 - ty - (CROP_SIZE - 1 - CROP_SIZE / 2) / s]])  # inverse of _crop_affine
    ref = np.array([[w / w0, 0.0, 0.5 * w / w0 - 0.5 - left], [0.0, h / h0, 0.5 * h / h0 - 0.5 - up]])
    m = np.concatenate([ref[:, :2] @ steady[:, :2], (ref[:, :2] @ steady[:, 2] + ref[:, 2])[:, None]], axis=1)
    return cv2.warpAffine(crop, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderValue=0)


def as_frame(frame, pos: int, size) -> np.ndarray:
    """A frame as RGB u8[H, W, 3] of the clip's size, or a ValueError naming the frame."""
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"frame {pos} is {a.dtype}{list(a.shape)}; video frames must be RGB uint8[H, W, 3]")
    if size is not None and a.shape[:2] != size:
        raise ValueError(f"frame {pos} is {a.shape[1]}x{a.shape[0]} but frame 0 is {size[1]}x{size[0]}; the frames "
                         "of a clip must keep one size (resize them, or re-encode the video at one size)")
    return a


def _landmark_source(landmarks, detector):
    """pos, frame -> (f32[K, 2] | None, reason)."""
    if landmarks is None and detector is None:
        raise ValueError("no landmarks: pass landmarks f[F, 5|68, 2] (a sidecar CLIP.landmarks.npy for "
                         "`jaxface video`), or install the detector (pip install 'jaxface[detect]')")

    def get(pos, frame):
        if landmarks is not None:
            if pos >= len(landmarks):
                raise ValueError(f"landmarks cover {len(landmarks)} frames but the clip has more; give one row per frame")
            lm = landmarks[pos]
            if lm is None:
                return None, NO_FACE
        elif hasattr(detector, "detect_faces"):
            found = detector.detect_faces(frame)
            lm = found[0].points68 if found else None
        else:
            found = detector.detect(frame)
            lm = found[0] if found else None
        if lm is None:
            return None, NO_FACE
        lm = np.asarray(lm, np.float32)
        if lm.ndim != 2 or lm.shape not in ((5, 2), (68, 2)):
            raise ValueError(f"landmarks of frame {pos} have shape {lm.shape}; expected [5, 2] or [68, 2]")
        if np.isnan(lm).all():
            return None, NO_FACE
        if not np.isfinite(lm).all():
            return None, "bad landmarks: some are NaN or infinite"
        h, w = frame.shape[:2]
        margin = 0.25 * max(h, w)
        if (lm < -margin).any() or (lm[:, 0] > w - 1 + margin).any() or (lm[:, 1] > h - 1 + margin).any():
            return None, f"bad landmarks: outside the {w}x{h} frame"
        return lm, "ok"

    return get


def align_clip(frames, landmarks=None, detector=None, smoothing: int = 2, chunk: int = 16, bar=None) -> AlignedClip:
    """Landmarks and crops of every frame (see the module docstring).

    frames: u8[F, H, W, 3] or an iterable of RGB u8[H, W, 3] (consumed once)
    landmarks: f[F, 5|68, 2] (NaN rows: no face) or a sequence of f[K, 2] | None, pixels y down;
        None: `detector` (a `jaxface.detect.Detector`: 68 points; or anything with `detect`)
    bar: a tqdm bar advanced per frame, or None.
    """
    get = _landmark_source(landmarks, detector)
    raw, reasons, done = [], [], {}
    pending: deque = deque()
    size = None

    def smoothed_five(pos):
        near = [raw[j] for j in range(max(0, pos - smoothing), min(len(raw), pos + smoothing + 1)) if raw[j] is not None]
        return np.mean([p if len(p) == 5 else five_from_68(p) for p in near], axis=0)

    def align_one(item):
        pos, frame = item
        try:
            a = align.align_image(frame, smoothed_five(pos))
            crop_lm = to_crop(raw[pos], a.trans_params).astype(np.float32)
            return _steady_crop(a.image, a.trans_params), crop_lm, a.trans_params, "ok"
        except ValueError as e:
            return None, None, None, f"alignment failed: {e}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        def flush(upto):
            jobs = []
            while pending and pending[0][0] <= upto:
                jobs.append(pending.popleft())
            for (pos, _), out in zip(jobs, pool.map(align_one, jobs)):
                done[pos] = out
                if out[3] != "ok":
                    reasons[pos] = out[3]
            if bar is not None:
                bar.update(len(jobs))

        for pos, frame in enumerate(frames):
            frame = as_frame(frame, pos, size)
            size = frame.shape[:2]
            lm, why = get(pos, frame)
            raw.append(lm)
            reasons.append(why)
            if lm is not None:
                pending.append((pos, frame))
            elif bar is not None:
                bar.update(1)
            if len(pending) >= chunk and pending[-1][0] - pending[0][0] > smoothing:
                flush(pos - smoothing)  # these frames' neighbours are all known now
        flush(len(raw))
    if not raw:
        raise ValueError("the clip has no frames")
    counts = {len(p) for p in raw if p is not None}
    if len(counts) > 1:
        raise ValueError("landmarks mix 5- and 68-point frames; give one layout for the whole clip")
    k = counts.pop() if counts else 68
    n = len(raw)
    crops = np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    lms = np.full((n, k, 2), np.nan, np.float32)
    trans = np.full((n, 5), np.nan, np.float64)
    for pos, (crop, lm, tp, why) in done.items():
        if why == "ok":
            crops[pos], lms[pos], trans[pos] = crop, lm, tp
    valid = np.array([r == "ok" for r in reasons])
    return AlignedClip(crops, lms, trans, valid, tuple(reasons), tuple(size))
