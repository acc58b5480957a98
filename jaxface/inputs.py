"""What users pass to `reconstruct`: batches, image arrays, and landmarks that are accepted
but probably wrong.

Such landmarks still get a result; callers report the warnings (`Reconstruction.warnings`,
rows with stage `warning` in `failures.csv`) so that a doubtful result is never silent.
"""

from __future__ import annotations

import os

import numpy as np

from jaxface.conventions import five_from_68

MIN_EYE_DISTANCE = 20.0  # px between the eyes in the photo; aligned crops have about 60
MAX_ROLL_DEG = 60.0      # eye-line angle beyond which a face is sideways or upside down


def landmark_warnings(points: np.ndarray) -> list[str]:
    """What looks implausible about landmarks f[5|68, 2] (pixels, y down; the 5 are left eye,
    right eye, nose, left and right mouth corner) that alignment accepts: [] when nothing does.

    - eyes closer than MIN_EYE_DISTANCE px: the face is upsampled to the crop (aligned faces
      have their eyes about 60 px apart), so the result is mostly the prior;
    - the mouth on the wrong side of the eye line (mirrored points): x and y swapped, or the
      eyes or mouth corners given in the other order;
    - the eye line rolled by more than MAX_ROLL_DEG: a sideways or upside-down face.
    """
    p = np.asarray(points, np.float64)
    p = five_from_68(p) if len(p) == 68 else p
    eyes = p[1] - p[0]
    down = (p[3] + p[4]) / 2 - (p[0] + p[1]) / 2  # from between the eyes to the mouth
    out = []
    dist = float(np.hypot(*eyes))
    if dist < MIN_EYE_DISTANCE:
        out.append(f"the eyes are {dist:.1f} px apart (under {MIN_EYE_DISTANCE:g}): the face is too small "
                   "for a reliable reconstruction")
    if eyes[0] * down[1] - eyes[1] * down[0] <= 0:
        out.append("the landmarks are mirrored (the mouth is on the wrong side of the eye line): "
                   "check that x and y are not swapped and the order is left eye, right eye, nose, left and "
                   "right mouth corner")
    else:
        roll = float(np.degrees(np.arctan2(eyes[1], eyes[0])))
        if abs(roll) > MAX_ROLL_DEG:
            out.append(f"the eye line is rolled by {roll:.0f} degrees ({'upside down' if abs(roll) > 135 else 'sideways'}"
                       " face): rotate the photo upright")
    return out


def as_batch(images, landmarks) -> tuple[list, list]:
    """(items, landmark sets) of a batch, a single path or a single image array."""
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        # one photo: its landmarks, when given, are one set f[5|68, 2]
        return [images], [None if landmarks is None else landmarks]
    if isinstance(images, (np.ndarray, list, tuple)) or hasattr(images, "__array__"):
        items = list(images)
    else:
        raise TypeError(f"images must be a path, an image array, or a list of them (or u8[N, H, W, 3]); "
                        f"got {type(images).__name__}")
    lms_in = [None] * len(items) if landmarks is None else list(landmarks)
    if len(lms_in) != len(items):
        raise ValueError(f"got {len(items)} images but {len(lms_in)} landmark sets")
    return items, lms_in


def as_rgb_u8(image) -> np.ndarray:
    """Arrays users pass: gray [H, W] or [H, W, 1], RGB, RGBA; uint8, uint16 or float 0-1."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 1|3|4]; got shape {a.shape}")
    if a.dtype == np.uint16:
        a = np.round(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError("image has NaN or infinite values")
        if a.size and a.max() > 1.5:  # the threshold of `fit`; a little over 1 is rounding
            raise ValueError(f"float images must be 0-1, found values up to {a.max():.1f}; divide by 255 "
                             "(or pass uint8)")
        a = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image dtype {a.dtype} is not supported; use uint8, uint16 or float 0-1")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])
