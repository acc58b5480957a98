"""Timing helpers shared by the benchmark scripts (each prints one JSON line)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import shutil
import time
from pathlib import Path

import jax


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_compile(fn, *args):
    """Seconds for the first call (trace + compile + one run)."""
    t = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t


def median_seconds(fn, *args, repeats: int = 7):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        block(fn(*args))
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def alternate(fns: dict, repeats: int = 7, pause_s: float = 0.0) -> dict:
    """Median seconds per callable, running them in alternation so machine noise hits all alike;
    each call after `pause_s` idle (a single interactive call) when given."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            time.sleep(pause_s)
            t = time.perf_counter()
            block(f())
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory_gib() -> float | None:
    """Peak bytes the default device's allocator has held in this process, GiB (None on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**30, 2)


def machine() -> dict:
    device = jax.devices()[0]
    return {"cpus": os.cpu_count(), "backend": jax.default_backend(), "device": device.device_kind,
            "jax": jax.__version__, "python": platform.python_version()}


def emit(name: str, figures: dict) -> None:
    print(json.dumps({"benchmark": name, **figures, "machine": machine()}), flush=True)


TEST_IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"


def photo_folder(folder: Path, n: int) -> list[Path]:
    """`n` photo files with their 5-point `.txt` in `folder`: copies of the test photos."""
    sources = sorted(TEST_IMAGES.glob("*.jpg"))
    paths = []
    for i in range(n):
        src, dst = sources[i % len(sources)], folder / f"p{i:05d}.jpg"
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_suffix(".txt"), dst.with_suffix(".txt"))
        paths.append(dst)
    return paths
