"""Multi-host training overhead on one machine: `jaxface train --synthetic` as 2 processes x 1
CPU device (jax.distributed, gloo all-reduces over localhost) against 1 process x 2 CPU
devices (the reference, run first), same global batch and seed.

Prints ONE JSON line: steady images/s of each (from metrics.csv, steps 3 ... N), their ratio,
seconds to the first step (start-up + compile) and the largest relative loss difference.
Both use the same cores, so the ratio shows the cost of processes and gloo, not a speed-up.

    .venv/bin/python benchmarks/multihost.py [--steps 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _env(devices: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(commands: list[list[str]], env: dict, timeout: float) -> None:
    procs = [subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            if p.returncode:
                raise SystemExit(f"benchmarks/multihost.py: a training process failed: {err[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["split"] == "train"]


def _speed(rows: list[dict], batch: int) -> tuple[float, float]:
    """(steady images/s over steps 3 ... N, seconds to step 1)."""
    t = {int(r["step"]): float(r["seconds"]) for r in rows}
    last = max(t)
    return (last - 2) * batch / (t[last] - t[2]), t[1]


def multihost_speed(steps: int = 8, batch: int = 4, timeout: float = 1200) -> dict:
    train = [sys.executable, "-m", "jaxface.cli", "train", "--synthetic", "--batch-size", str(batch),
             "--steps", str(steps), "--log-every", "1", "--val-images", "0", "--checkpoint-every", str(steps)]
    with tempfile.TemporaryDirectory() as tmp:
        single, multi = Path(tmp) / "single", Path(tmp) / "multi"
        _run([[*train, "--out", str(single)]], _env(2), timeout)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _run([[*train, "--out", str(multi), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
               "--process-id", str(i)] for i in (0, 1)], _env(1), timeout)
        ref, got = _rows(single), _rows(multi)
    loss_diff = max(abs(float(a["loss"]) - float(b["loss"])) / abs(float(a["loss"])) for a, b in zip(ref, got))
    (ref_speed, ref_first), (speed, first) = _speed(ref, batch), _speed(got, batch)
    ratio = speed / ref_speed
    return {"steps": steps, "batch": batch, "images_per_s": round(speed, 3),
            "reference_images_per_s": round(ref_speed, 3), "ratio_vs_reference": round(ratio, 3),
            "first_step_s": round(first, 1), "reference_first_step_s": round(ref_first, 1),
            "max_rel_loss_diff": loss_diff,
            "targets": {"losses_match_1e-5": len(got) == len(ref) == steps and loss_diff <= 1e-5,
                        "ratio_at_least_0.8": ratio >= 0.8}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    emit("multihost", multihost_speed(args.steps, args.batch))


if __name__ == "__main__":
    main()
