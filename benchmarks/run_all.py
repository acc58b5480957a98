"""Every benchmark in one process at GPU batch sizes; prints ONE JSON line per benchmark.

    python benchmarks/run_all.py --device gpu             # H100/H200 class; budget 8 minutes in all
    python benchmarks/run_all.py --device cpu --smoke     # tiny sizes: checks that it still runs
    python benchmarks/run_all.py --device gpu --only fitting,train

`benchmarks/gpu.sh` installs the CUDA extra and runs the first line. The sizes (`Sizes`) are
the issue's: R-Net float32 and bfloat16 at batch 64 and 256, R-Net + formation (bfloat16)
at 256, formation at 1,024, rendering at 64, end to end at 64, fitting at 64, a few training
steps at 64. Each line carries its sizes, compile times apart from steady state, the
in-process references of the script it comes from, images/s against the seed's 50 images/s
(`vs_seed_50_ips`), the issue's targets as booleans (they are set for an H100/H200 class
GPU), `wall_s` and the device's peak memory. A benchmark that raises prints its error on
its line and the others still run; the exit status is then 1.

Before jax starts, the backend is chosen (JAX_PLATFORMS) and, on CUDA with an affected
jaxlib (0.10.2-0.11.0), float32 scatter-add gets its native atomics back (`cuda_xla_flags`;
jax issue 38806: it compiles to a compare-and-swap loop, up to ~2000x slower under index
contention). The backward pass of every gather (interpolation, fitting, training) is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_IPS = 50.0  # the seed's reconstruction throughput on a GTX 1080, images/s
FTZ_ATOMICS = "-nvptx-allow-ftz-atomics"
AFFECTED_JAXLIB = ((0, 10, 2), (0, 11, 0))  # jax issue 38806 / XLA issue 46225
CUDA_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Batch sizes and repeat counts of one run (steady-state figures are medians of `repeats`)."""

    rnet_batches: tuple[int, ...] = (64, 256)
    rnet_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    rnet_formation_batch: int = 256
    formation_batch: int = 1024
    numpy_batch: int = 16  # the numpy formation reference (per face, so any batch compares)
    render_batch: int = 64
    end_to_end_batch: int = 64
    fit_batch: int = 64
    landmark_steps: int = 100
    photo_steps: int = 100
    raster_every: int = 10
    train_batch: int = 64
    repeats: int = 5
    fit_repeats: int = 3


GPU = Sizes()
SMOKE = Sizes(rnet_batches=(1,), rnet_dtypes=("bfloat16",), rnet_formation_batch=1, formation_batch=2,
              numpy_batch=1, render_batch=1, end_to_end_batch=1, fit_batch=1, landmark_steps=2, photo_steps=2,
              raster_every=1, train_batch=1, repeats=1, fit_repeats=1)


# ----------------------------------------------------------------------------- backend, before jax

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_xla_flags(flags: str, jaxlib: str | None, plugins: list[str]) -> str:
    """XLA_FLAGS `flags` with the scatter-add workaround added when `jaxlib` is an affected
    version and a CUDA plugin is installed (else `flags` unchanged). An existing
    --xla_backend_extra_options keeps its options (XLA reads the last occurrence only)."""
    low, high = AFFECTED_JAXLIB
    if not plugins or jaxlib is None or not low <= _version(jaxlib) <= high:
        return flags
    tokens = flags.split()
    for i, tok in enumerate(tokens):
        if tok.startswith("--xla_backend_extra_options="):
            opts = [o for o in tok.split("=", 1)[1].split(",") if o]
            if FTZ_ATOMICS not in opts:
                tokens[i] = "--xla_backend_extra_options=" + ",".join([*opts, FTZ_ATOMICS])
            return " ".join(tokens)
    return " ".join([*tokens, f"--xla_backend_extra_options={FTZ_ATOMICS}"])


def configure_backend(device: str, environ=os.environ) -> None:
    """Set JAX_PLATFORMS and XLA_FLAGS for `device` ("gpu" or "cpu"); must run before jax
    starts a backend (XLA reads XLA_FLAGS once per process)."""
    if "jax" in sys.modules:
        raise RuntimeError("run_all.configure_backend must run before jax is imported (XLA reads XLA_FLAGS once)")
    flags = environ.get("XLA_FLAGS", "")
    if device == "gpu":
        environ["JAX_PLATFORMS"] = "cuda"
        flags = cuda_xla_flags(flags, installed("jaxlib"), [p for p in CUDA_PLUGINS if installed(p)])
    else:
        environ["JAX_PLATFORMS"] = "cpu"
    if flags:
        environ["XLA_FLAGS"] = flags


# ----------------------------------------------------------------------------- the benchmarks

def seed_ratios(ips: dict) -> dict:
    return {k: round(v / SEED_IPS, 1) for k, v in ips.items()}


def bench_rnet(sizes: Sizes, ctx: dict) -> dict:
    from reconstruct import pipeline_speed
    from rnet import flax_speed

    speed = flax_speed(ctx["variables"], ctx["rnet_config"], sizes.rnet_batches, sizes.rnet_dtypes, sizes.repeats)
    bf16 = dataclasses.replace(ctx["rnet_config"], dtype="bfloat16")
    formed = pipeline_speed(ctx["variables"], bf16, ctx["model"], sizes.rnet_formation_batch, render=False,
                            repeats=sizes.repeats)
    ips = {**speed["images_per_s"], "rnet_formation_bf16": formed["images_per_s"]}
    return {**speed, "rnet_formation_bf16": formed, "vs_seed_50_ips": seed_ratios(ips),
            "targets": {"rnet_formation_bf16_at_least_5000_ips": formed["images_per_s"] >= 5000}}


def bench_formation(sizes: Sizes, ctx: dict) -> dict:
    from synthesis import formation_speed

    out = formation_speed(ctx["model"], sizes.formation_batch, sizes.repeats, numpy_batch=sizes.numpy_batch)
    ips = 1e3 / out["jax_ms_per_face"]
    return {"batch": sizes.formation_batch, **out, "images_per_s": round(ips, 1),
            "vs_seed_50_ips": seed_ratios({"formation": ips}), "targets": {}}


def bench_render(sizes: Sizes, ctx: dict) -> dict:
    from render import numpy_reference, render_speed
    from render_fixtures import face_model

    mesh = face_model()
    out, (verts, colors) = render_speed(mesh, (sizes.render_batch,), sizes.repeats)
    out.update(numpy_reference(mesh, verts, colors, sizes.repeats))
    b = sizes.render_batch
    ips = {k: 1e3 / out[f"{k}_ms_per_image_b{b}"] for k in ("forward", "backward")}
    out["numpy_over_jax_forward"] = round(out["numpy_rasterize_ms"] / out[f"forward_ms_per_image_b{b}"], 1)
    return {"batch": b, **out, "images_per_s": {k: round(v, 1) for k, v in ips.items()},
            "vs_seed_50_ips": seed_ratios(ips), "targets": {}}


def bench_end_to_end(sizes: Sizes, ctx: dict) -> dict:
    from reconstruct import pipeline_speed, reconstruct_speed

    b = sizes.end_to_end_batch
    bf16 = dataclasses.replace(ctx["rnet_config"], dtype="bfloat16")
    device = pipeline_speed(ctx["variables"], bf16, ctx["model"], b, render=True, repeats=sizes.repeats)
    recon = reconstruct_speed(ctx["model"], ctx["weights"], b, sizes.repeats)
    ips = {"device_pipeline": device["images_per_s"], "reconstructor": recon["images_per_s"]}
    return {"batch": b, "rnet_dtype": "bfloat16", "device_pipeline": device, "reconstructor": recon,
            "vs_seed_50_ips": seed_ratios(ips),
            "targets": {"end_to_end_at_least_1000_ips": recon["images_per_s"] >= 1000,
                        "device_pipeline_at_least_1000_ips": device["images_per_s"] >= 1000}}


def bench_fitting(sizes: Sizes, ctx: dict) -> dict:
    import jax
    from accuracy import fit_speed

    from jaxface.fit import FitConfig

    cfg = FitConfig(landmark_steps=sizes.landmark_steps, photo_steps=sizes.photo_steps, raster_every=sizes.raster_every)
    out = fit_speed(ctx["model"], sizes.fit_batch, cfg, jax.random.key(1), sizes.fit_repeats, sizes.repeats)
    steps = out["step_ms_per_face"]
    ips = 1.0 / out["photometric_fit"]
    return {"landmark_steps": cfg.landmark_steps, "photo_steps": cfg.photo_steps, "raster_every": cfg.raster_every,
            "seconds_per_face": out, "faster_layout": "batch_minor" if steps["speedup"] >= 1 else "per_face_reference",
            "images_per_s": round(ips, 1), "vs_seed_50_ips": seed_ratios({"fit": ips}),
            "targets": {"100_steps_under_20ms_per_face_at_b64": sizes.fit_batch == 64
                        and out["photometric_per_100_steps"] < 0.020}}


def bench_train(sizes: Sizes, ctx: dict) -> dict:
    from train import train_speed

    out = train_speed(ctx["model"], sizes.train_batch, sizes.repeats, halves=False)  # the step alone
    return {**out, "vs_seed_50_ips": seed_ratios(out["images_per_s"]), "targets": {}}


BENCHMARKS = {"rnet": bench_rnet, "formation": bench_formation, "render": bench_render,
              "end_to_end": bench_end_to_end, "fitting": bench_fitting, "train": bench_train}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every benchmark still runs")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")

    if args.device == "gpu" and not any(installed(p) for p in CUDA_PLUGINS):
        print(f"run_all: --device gpu needs jax's CUDA plugin ({' or '.join(CUDA_PLUGINS)}): "
              "pip install -e '.[cuda]' (benchmarks/gpu.sh does), or run --device cpu", file=sys.stderr)
        return 2
    configure_backend(args.device)
    sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # the scripts' functions, the render test mesh
    import jax

    try:
        jax.devices()
    except Exception as e:  # jax raises RuntimeError or AssertionError, depending on what is missing
        print(f"run_all: jax found no {args.device.upper()} ({type(e).__name__}: {e}); check that nvidia-smi "
              "lists one and that the CUDA plugin matches jax (pip install -e '.[cuda]')", file=sys.stderr)
        return 2

    from common import emit, peak_memory_gib

    from jaxface.model.synthetic import synthetic_face_model
    from jaxface.rnet import RNetConfig, init_rnet, load_rnet, save_rnet

    sizes = SMOKE if args.smoke else GPU
    failed = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as weights:
        # Random weights (speed does not depend on them), loaded back as Reconstructor loads them:
        # every benchmark then passes the same placed arrays, and shares compiled programs.
        save_rnet(init_rnet(jax.random.key(0)), RNetConfig(dtype="bfloat16"), weights)
        variables, config = load_rnet(weights)
        ctx = {"model": synthetic_face_model(), "variables": variables, "weights": weights,
               "rnet_config": dataclasses.replace(config, dtype="float32")}
        for name in names:
            t0 = time.perf_counter()
            try:
                figures = BENCHMARKS[name](sizes, ctx)
            except Exception as e:  # one failure must not hide the other figures of a scarce GPU run
                traceback.print_exc()
                figures, failed = {"error": f"{type(e).__name__}: {e}"}, failed + 1
            wall = time.perf_counter() - t0
            emit(name, {"smoke": args.smoke, **figures, "wall_s": round(wall, 1), "peak_memory_gib": peak_memory_gib()})
            print(f"run_all: {name} {wall:.1f} s (total {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
