"""benchmarks/run_all.py: the GPU readiness check still runs (CPU, --smoke) and its lines keep their
keys; the CUDA scatter-add workaround is added to XLA_FLAGS only where it applies."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Imported by path (the benchmarks' folder stays off sys.path); stdlib only at import.
_spec = importlib.util.spec_from_file_location("benchmarks_run_all", ROOT / "benchmarks" / "run_all.py")
run_all = sys.modules["benchmarks_run_all"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_all)

OPTION = "--xla_backend_extra_options=-nvptx-allow-ftz-atomics"
PLUGIN = ["jax-cuda12-plugin"]


@pytest.mark.parametrize("flags, jaxlib, plugins, expected", [
    ("", "0.10.2", PLUGIN, OPTION),
    ("", "0.11.0", PLUGIN, OPTION),
    ("--xla_gpu_autotune_level=0", "0.10.2", PLUGIN, f"--xla_gpu_autotune_level=0 {OPTION}"),
    # XLA keeps only the last --xla_backend_extra_options: merge into the one there is.
    ("--xla_backend_extra_options=a=1", "0.10.2", PLUGIN, "--xla_backend_extra_options=a=1,-nvptx-allow-ftz-atomics"),
    (OPTION, "0.10.2", PLUGIN, OPTION),
    ("", "0.10.1", PLUGIN, ""),  # native atomics before 0.10.2
    ("", "0.11.1", PLUGIN, ""),
    ("", "0.10.2", [], ""),  # no CUDA plugin: a CPU install, the option would be unknown
    ("", None, PLUGIN, ""),
])
def test_cuda_xla_flags(flags, jaxlib, plugins, expected):
    assert run_all.cuda_xla_flags(flags, jaxlib, plugins) == expected


def test_configure_backend_refuses_once_jax_is_imported():
    import jax  # noqa: F401  (pytest's process has it already)

    environ = {}
    with pytest.raises(RuntimeError, match="before jax is imported"):
        run_all.configure_backend("gpu", environ=environ)
    assert environ == {}


def test_configure_backend_sets_platform_and_flags(monkeypatch):
    monkeypatch.delitem(sys.modules, "jax")  # as in a fresh run_all process (restored afterwards)
    versions = {"jaxlib": "0.10.2", "jax-cuda12-plugin": "0.10.2"}
    monkeypatch.setattr(run_all, "installed", versions.get)
    gpu = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    run_all.configure_backend("gpu", environ=gpu)
    assert gpu == {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": f"--xla_dump_to=/tmp/x {OPTION}"}
    cpu = {}
    run_all.configure_backend("cpu", environ=cpu)  # the NVPTX option only where CUDA compiles
    assert cpu == {"JAX_PLATFORMS": "cpu"}


def test_bad_arguments_say_what_to_do(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_all.main(["--device", "cpu", "--only", "rnet,nope"])
    assert exit_.value.code == 2 and "unknown benchmark(s) ['nope']" in capsys.readouterr().err
    monkeypatch.setattr(run_all, "installed", lambda name: None)  # a CPU-only install
    assert run_all.main(["--device", "gpu"]) == 2
    assert "pip install -e '.[cuda]'" in capsys.readouterr().err


# Keys every line has, and each benchmark's own figures and targets (the issue's, as booleans).
COMMON = {"benchmark", "smoke", "targets", "vs_seed_50_ips", "wall_s", "peak_memory_gib", "machine"}
FIGURES = {
    "rnet": {"images_per_s", "compile_s", "rnet_formation_bf16"},
    "formation": {"batch", "jax_ms_per_face", "numpy_ms_per_face", "speedup_vs_numpy", "images_per_s"},
    "render": {"batch", "images_per_s", "numpy_rasterize_ms", "numpy_over_jax_forward"},
    "end_to_end": {"batch", "device_pipeline", "reconstructor"},
    "fitting": {"seconds_per_face", "faster_layout", "images_per_s"},
    "train": {"batch", "images_per_s", "compile_s"},
}
TARGETS = {
    "rnet": {"rnet_formation_bf16_at_least_5000_ips"},
    "formation": set(),
    "render": set(),
    "end_to_end": {"end_to_end_at_least_1000_ips", "device_pipeline_at_least_1000_ips"},
    "fitting": {"100_steps_under_20ms_per_face_at_b64"},
    "train": set(),
}


# Compiling the fit (two programs plus the layout comparison) and the train step takes about
# 50 s on 2 cores, over this test's budget: those two run by hand (`run_all.py --device cpu
# --smoke`, about 90 s) before a GPU run; CI runs the rest.
CI_BENCHMARKS = ["rnet", "formation", "render", "end_to_end"]


def test_run_all_smoke_prints_one_line_per_benchmark(synthetic_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXFACE_CACHE": str(synthetic_dir.parent)}
    out = subprocess.run([sys.executable, "benchmarks/run_all.py", "--device", "cpu", "--smoke",
                          "--only", ",".join(CI_BENCHMARKS)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {d["benchmark"]: d for d in lines}
    assert [d["benchmark"] for d in lines] == CI_BENCHMARKS
    for name, d in by_name.items():
        assert COMMON | FIGURES[name] <= d.keys() and "error" not in d, name
        assert d["smoke"] is True and d["machine"]["backend"] == "cpu" and d["peak_memory_gib"] is None
        assert set(d["targets"]) == TARGETS[name] and all(isinstance(v, bool) for v in d["targets"].values())
        assert d["vs_seed_50_ips"] and all(v >= 0 for v in d["vs_seed_50_ips"].values()), name

    rnet = by_name["rnet"]
    assert set(rnet["images_per_s"]) == {"bfloat16_b1"} and rnet["rnet_formation_bf16"]["batch"] == 1
    ips = rnet["images_per_s"]["bfloat16_b1"]
    assert rnet["vs_seed_50_ips"]["bfloat16_b1"] == pytest.approx(ips / 50, abs=0.051)
    assert by_name["formation"]["jax_ms_per_face"] > 0 and by_name["formation"]["numpy_batch"] == 1
    render = by_name["render"]
    # The numpy z-buffer and the jax one agree pixel for pixel on the face mesh.
    assert render["numpy_vs_jax_tri_id_mismatch_px"] == 0 and render["forward_ms_per_image_b1"] > 0
    e2e = by_name["end_to_end"]
    assert set(e2e["reconstructor"]["stage_ms_per_image"]) == {"align", "rnet", "formation", "render", "to_photo"}
    assert e2e["device_pipeline"]["images_per_s"] > 0
