"""Multi-host training: two processes on localhost (gloo CPU collectives), one CPU device
each, against one process with two devices (`--xla_force_host_platform_device_count=2`).

Both see the same global batches and run the same partitioned step, and an all-reduce of two
operands does not depend on its order, so losses and weights agree to rounding (measured:
bitwise). The multi-process run stops after 2 steps and resumes to 3. Every run is a
`jaxface train --synthetic` subprocess (R-Net is a full ResNet-50: each compile costs tens of
seconds on CPU); they share a persistent compilation cache, which the resumed processes hit.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxface.rnet import load_rnet
from jaxface.train import train_cli

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-m", "jaxface.cli", "train", "--synthetic", "--batch-size", "2", "--log-every", "1",
         "--val-images", "0", "--checkpoint-every", "2"]
TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, devices: int = 1) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _run_together(commands: list[tuple[list[str], dict]], timeout: float = TIMEOUT_S) -> list[tuple[int, str, str]]:
    """Start every command, wait for all; (returncode, stdout, stderr) each. On a timeout all
    are killed (no process outlives the test) and the test fails with their output."""
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in commands]
    try:
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
        return out
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate() for p in procs]
        pytest.fail(f"training processes still running after {timeout} s: " + " | ".join(e[-2000:] for _, e in logs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _cluster(run: Path, steps: int, env: dict, *extra: str) -> list[tuple[list[str], dict]]:
    """The two processes of one run (their commands and environment)."""
    port = _free_port()
    return [([*TRAIN, "--out", str(run), "--steps", str(steps), "--coordinator", f"127.0.0.1:{port}",
              "--num-processes", "2", "--process-id", str(i), "--coordinator-timeout", "120", *extra], env)
            for i in (0, 1)]


def _ok(results):
    for rc, out, err in results:
        assert rc == 0, out[-3000:] + err[-3000:]
    return results


def _metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one process x 2 devices, 2 processes x 1 device) run folders, 3 steps each; the
    multi-process run stops at step 2 and resumes. Also the processes' outputs."""
    tmp = tmp_path_factory.mktemp("multihost")
    cache = tmp / "jax-cache"
    single, multi = tmp / "single", tmp / "multi"
    # The reference compiles beside the two processes: a compile is mostly one core's work.
    reference = ([*TRAIN, "--out", str(single), "--steps", "3"], _env(cache, devices=2))
    results = _ok(_run_together([reference, *_cluster(multi, 2, _env(cache))]))
    resumed = _ok(_run_together(_cluster(multi, 3, _env(cache), "--resume")))
    return single, multi, results[1:], resumed


def test_two_processes_match_one_process_with_two_devices(runs):
    """Per-step losses (metrics.csv, 6 significant digits) to 1e-5 relative, the exported
    weights after 3 steps (24M values, through the multi-process resume) to 1e-5 (1 + |w|)."""
    single, multi, first, resumed = runs
    ref, got = _metrics(single), _metrics(multi)
    assert [r["step"] for r in got] == ["1", "2", "3"] == [r["step"] for r in ref]  # each row once: process 0's
    for a, b in zip(ref, got):
        for term in ("loss", "coeffs", "landmark"):
            np.testing.assert_allclose(float(b[term]), float(a[term]), rtol=1e-5, err_msg=f"step {a['step']} {term}")
    (w_ref, config_ref), (w_multi, config_multi) = load_rnet(single / "rnet"), load_rnet(multi / "rnet")
    assert config_multi == config_ref
    leaves_ref, leaves_multi = jax.tree.leaves(w_ref), jax.tree.leaves(w_multi)
    assert jax.tree.structure(w_ref) == jax.tree.structure(w_multi)
    off = sum(int(np.sum(np.abs(b - a) > 1e-5 * (1 + np.abs(a)))) for a, b in zip(leaves_ref, leaves_multi))
    worst = max(float(np.max(np.abs(b - a))) for a, b in zip(leaves_ref, leaves_multi))
    assert off == 0, f"{off} weights differ by more than 1e-5 (1 + |w|); max |diff| {worst}"
    assert json.loads((multi / "rnet" / "rnet.json").read_text())["source"]["steps"] == 3

    # Written once: one checkpoint per step, one train.json with both segments; process 0 logs.
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["2", "3"]
    segments = json.loads((multi / "train.json").read_text())["segments"]
    assert [(s["start_step"], s["end_step"], bool(s["finished"])) for s in segments] == [(0, 2, True), (2, 3, True)]
    assert segments[0]["settings"]["batch_size"] == 2
    (_, out0, _), (_, out1, _) = first
    assert "step 2/2 loss" in out0 and "wrote" in out0 and _said(out1) == []
    assert "resuming" in resumed[0][1] and "step 3/3 loss" in resumed[0][1] and _said(resumed[1][1]) == []


def _said(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip() and not line.startswith("[Gloo]")]


def test_cluster_flags_are_checked(capsys):
    for args, match in ((["--coordinator", "127.0.0.1:1234"], "needs all of --coordinator, --num-processes and "
                         "--process-id (given: --coordinator)"),
                        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
                         "--process-id must be in 0 ... 1"),
                        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT")):
        with pytest.raises(SystemExit) as e:
            train_cli(["--synthetic", "--out", "unused", *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert match in err, err


def test_unreachable_coordinator_odd_batch_other_settings(tmp_path):
    """A process whose coordinator never answers says so in one line (with the timeout) and
    exits 2; a batch that does not split over both processes' devices, or processes started
    with different settings, are refused by every process before the run folder is made."""
    env = _env(tmp_path / "jax-cache")
    port = _free_port()
    lonely = [*TRAIN, "--out", str(tmp_path / "never"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
              "--process-id", "1", "--coordinator-timeout", "2"]
    odd = _cluster(tmp_path / "odd", 2, env, "--batch-size", "3")
    (cmd0, _), (cmd1, _) = _cluster(tmp_path / "other", 2, env)
    other = [(cmd0, env), ([*cmd1, "--lr", "2e-4"], env)]
    (rc, out, err), *refused = _run_together([(lonely, env), *odd, *other], timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert lines[-1].startswith(f"jaxface train: error: cannot reach the coordinator 127.0.0.1:{port} within 2 s "
                                "(process 1 of 2"), err
    for (rc, out, err), message in zip(refused, ["batch size 3 does not split over the 2 devices"] * 2
                                       + ["started with different settings (process 1 differs from process 0)"] * 2):
        assert rc == 1 and message in err and "Traceback" not in err, err
    assert not any((tmp_path / name).exists() for name in ("never", "odd", "other"))


def test_a_process_loads_only_its_rows():
    """The rows a process loads are the same rows of the whole batch (augmentation included)."""
    from jaxface.data import PhotoDataset
    from jaxface.train import batch_sharding, data_mesh, local_rows

    photos = PhotoDataset(Path(__file__).parent / "data" / "images", batch_size=4, seed=1)
    whole, part = photos.batch(3), photos.batch(3, slice(1, 3))
    np.testing.assert_array_equal(part.images, whole.images[1:3])
    np.testing.assert_array_equal(part.landmarks, whole.landmarks[1:3])
    assert local_rows(batch_sharding(data_mesh(jax.devices()[:1])), 4) == slice(0, 4)
