"""Temporal figures of a reconstructed clip (benchmarks/video.py, tests)."""

from __future__ import annotations

import numpy as np


def jitter(x, valid=None) -> float:
    """Mean norm of the second difference over time: mean over t (and points) of
    |x[t+1] - 2 x[t] + x[t-1]|, counting only t whose three frames are valid.

    x: f[F, ..., D] (e.g. landmarks f[F, 68, 2] in pixels: D = 2, a norm per point; angles
    f[F, 3]: one norm per frame); valid: bool[F] | None (all)."""
    x = np.asarray(x, np.float64)
    valid = np.ones(len(x), bool) if valid is None else np.asarray(valid, bool)
    if len(x) < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {len(x)}")
    d = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1)
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    if not ok.any():
        raise ValueError("no three consecutive valid frames")
    return float(d[ok].mean())
