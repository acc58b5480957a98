"""Ray Data reconstruction (`reconstruct --ray`) against the one-process command on the same cores.

Prints one JSON line: steady-state images/s of the one-process loop (Reconstructor + writing
each batch's outputs, as `jaxface reconstruct` does, after its first batch) and of the Ray path
(`reconstruct_dataset` on a local Ray instance, after every actor's first batch), their ratio,
and each actor's start-up (building its Reconstructor) and first batch (compiling) with a cold
and with a warm persistent JAX compilation cache. Ray pools: the default (two actors, half the
CPUs each) and one actor with every CPU.

Method "rnet" with randomly initialised weights (speed does not depend on the values; as in
benchmarks/reconstruct.py): timing only, not a reconstruction. The photos are copies of the test
photos. Target: the Ray path keeps at least 90% of the one-process throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from common import emit, photo_folder

def one_process(photos, out: Path, weights: str, batch: int) -> dict:
    """The one-process command's loop (jaxface.reconstruct_cli: _build, then _pipeline, which
    overlaps loading, the network and writing); the first batch (compiling) is timed apart."""
    from jaxface.reconstruct_cli import _build, _pipeline

    args = argparse.Namespace(bfm=None, weights=weights, method="rnet", batch_size=batch, steps=None,
                              texture=False, texture_size=512, rnet_dtype=None)
    t = time.perf_counter()
    recon, model, _ = _build(args, quiet=True)
    build_s = time.perf_counter() - t
    stems = [p.stem for p in photos]
    chunks = [list(range(s, min(s + batch, len(photos)))) for s in range(0, len(photos), batch)]
    written = []

    def run(chunks):
        t = time.perf_counter()
        _pipeline(recon, chunks, photos, stems, out, model, None, lambda n, d, w, rows: written.append(d))
        return time.perf_counter() - t

    first = run(chunks[:1])
    steady = run(chunks[1:])
    if sum(written) != len(photos):
        raise RuntimeError(f"reconstruction failed: {len(photos) - sum(written)} photos without results")
    return {"build_s": round(build_s, 2), "first_batch_s": round(first, 2),
            "images_per_s": round(len(photos[batch:]) / steady, 2)}


def ray_run(folder: Path, out: Path, weights: str, batch: int, actors: int, cpus: float, cache: Path,
            overwrite: bool) -> dict:
    from jaxface.distributed import reconstruct_dataset

    t = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the run's summary line; stdout is the JSON line
        run = reconstruct_dataset([folder], out, method="rnet", weights=weights, batch_size=batch, actors=actors,
                                  cpus_per_actor=cpus, compile_cache=cache, overwrite=overwrite)
    if run.done != len(list(folder.glob("*.jpg"))):
        raise RuntimeError(f"Ray run reconstructed {run.done} photos, {run.failed} failed")
    return {"actors": actors, "cpus_per_actor": cpus, "wall_s": round(time.perf_counter() - t, 2),
            "images_per_s_overall": run.images_per_s, "images_per_s": run.steady_images_per_s,
            "actor_build_s": [a for a, _ in run.actor_startup], "actor_first_batch_s": [b for _, b in run.actor_startup]}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photos", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    import ray

    # Ray first: its start spawns processes, which must happen before JAX starts here.
    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray_init_s = time.perf_counter() - t
    import jax

    from jaxface.rnet import RNetConfig, init_rnet, save_rnet

    result = {"method": "rnet", "weights": "random init (timing only)", "photos": args.photos,
              "batch": args.batch_size, "ray": ray.__version__, "ray_init_s": round(ray_init_s, 2)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            weights = tmp / "weights"
            save_rnet(init_rnet(jax.random.key(0), RNetConfig()), RNetConfig(), weights)
            (tmp / "in").mkdir()
            photos = photo_folder(tmp / "in", args.photos)
            result["one_process"] = one_process(photos, tmp / "single", str(weights), args.batch_size)
            print("one process done", file=sys.stderr)
            cache = tmp / "jax-cache"
            half = max(1, cpus // 2)  # the default pool: two actors, half the CPUs each
            default = f"ray_{cpus // half}x{half}"
            runs = {
                f"{default}_cold_cache": (cpus // half, half, False),
                f"{default}_warm_cache": (cpus // half, half, True),
                f"ray_1x{cpus}_warm_cache": (1, cpus, True),
            }
            for name, (actors, per_actor, overwrite) in runs.items():
                result[name] = ray_run(tmp / "in", tmp / "ray", str(weights), args.batch_size, actors, per_actor,
                                       cache, overwrite)
                print(f"{name} done", file=sys.stderr)
    finally:
        ray.shutdown()
    single = result["one_process"]["images_per_s"]
    cold, warm = result[f"{default}_cold_cache"], result[f"{default}_warm_cache"]
    rate = warm["images_per_s"]
    result["ratio_default_pool"] = round(rate / single, 3) if rate else None
    result["ratio_one_actor"] = round((result[f"ray_1x{cpus}_warm_cache"]["images_per_s"] or 0) / single, 3)
    # Per actor: building the Reconstructor + the first batch (compiling, or loading from the cache).
    result["actor_startup_s"] = {k: [round(a + b, 2) for a, b in zip(r["actor_build_s"], r["actor_first_batch_s"])]
                                 for k, r in (("cold_cache", cold), ("warm_cache", warm))}
    result["targets"] = {"ray_at_least_90pct_of_single_process": bool(rate and rate >= 0.9 * single)}
    emit("distributed", result)


if __name__ == "__main__":
    main()
