"""R-Net inference speed on CPU: Flax (float32, bfloat16) versus the same network in PyTorch.

Prints ONE JSON line. Both run in this process on the same converted weights, alternating
run by run (other work on the machine then hits both alike); figures are medians. Each timed
call follows 0.2 s idle, as a single interactive call does; `b1_stream` times calls back to
back (video, a loop over photos). Flax runs with XLA's workers pinned one per core, as
`Reconstructor` runs it (`jaxface.cpu.pinned`); `b1_unpinned` is batch 1 without.
FLOPs come from XLA's cost analysis; the peak is a 2048^3 matmul timed here. Targets (issue
#24): batch 1 >= torch, batch 16 >= 1.3x torch, bfloat16 >= 1.3x float32 at batch 16.
Needs torch (`pip install 'jaxface[torch]'`). `flax_speed` (Flax alone, no torch) is what
`run_all.py` times on a GPU.

    python benchmarks/rnet.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import alternate, time_compile
from jaxface import cpu
from jaxface.rnet.network import RNetConfig, predict


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def random_crops(batch: int, seed: int = 0, dtype=np.float32) -> jax.Array:
    """[batch, 224, 224, 3] random crops on the default device: float 0-1, or uint8 as photos come."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return jax.device_put(rng.integers(0, 256, (batch, 224, 224, 3), np.uint8))
    return jax.device_put(rng.uniform(0, 1, (batch, 224, 224, 3)).astype(dtype))


def flax_run(variables, images, config: RNetConfig, pin: bool = True):
    """A callable running `predict` once on device-resident `images` and waiting for it, with
    XLA's CPU workers pinned one per core as `Reconstructor` runs it (`pin`, CPU only)."""
    def run():
        with cpu.pinned(pin):
            return predict(variables, images, config).block_until_ready()
    return run


def flax_speed(variables, config: RNetConfig, batches=(16,), dtypes=("float32", "bfloat16"), repeats: int = 7) -> dict:
    """Flax R-Net images/s for each compute dtype and batch (medians of alternated runs) on
    uint8 crops, as `Reconstructor` feeds it, with the first call (compile) of each apart.
    variables: float32 R-Net variables."""
    runs, sizes = {}, {}
    for b in batches:
        images = random_crops(b, dtype=np.uint8)
        for dtype in dtypes:
            key = f"{dtype}_b{b}"
            runs[key], sizes[key] = flax_run(variables, images, dataclasses.replace(config, dtype=dtype)), b
    compile_s = {k: round(time_compile(f), 2) for k, f in runs.items()}
    seconds = alternate(runs, repeats=repeats)
    return {"images_per_s": {k: round(sizes[k] / t, 1) for k, t in seconds.items()}, "compile_s": compile_s}


def native_bf16() -> bool:
    """Whether this CPU has a bfloat16 dot-product instruction (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_peak(dtype, n: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of XLA's best case here: an n x n x n product (float32 result), best of `repeats`."""
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((n, n)).astype(np.float32)).astype(dtype) for _ in range(2))
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    return 2 * n**3 / min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats)) / 1e9


def main() -> None:
    import torch

    from jaxface.coeffs import LAYOUT
    from jaxface.rnet.convert import torch_state_to_variables
    from jaxface.rnet.torch_reference import TorchRNet, randomize_

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net = randomize_(TorchRNet("torch"), seed=0)
    variables, config = torch_state_to_variables(net.state_dict())
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    jax_inputs = {b: random_crops(b) for b in (1, 16)}
    torch_inputs = {b: torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous() for b, x in jax_inputs.items()}

    def run_flax(b, cfg=config, pin=True):
        return flax_run(variables, jax_inputs[b], cfg, pin)

    def run_torch(b):
        def f():
            with torch.inference_mode():
                return net(torch_inputs[b])
        return f

    compile_s = {f"float32_b{b}": _timed(run_flax(b)) for b in (1, 16)}
    compile_s.update({f"bfloat16_b{b}": _timed(run_flax(b, bf16)) for b in (1, 16)})
    with torch.inference_mode():
        ref = net(torch_inputs[16]).numpy()
    f32_out = np.asarray(run_flax(16)())
    bf16_out = np.asarray(predict(variables, jax_inputs[16], bf16))
    parity = float(np.abs(f32_out - ref).max() / np.abs(ref).max())
    # bfloat16 against float32, over the whole vector and per coefficient group (id, exp, ...).
    bf16_err = float(np.abs(bf16_out - f32_out).max() / np.abs(f32_out).max())
    groups, start = {}, 0
    for name, width in LAYOUT:
        a, b = f32_out[:, start:start + width], bf16_out[:, start:start + width]
        groups[name] = float(f"{np.abs(b - a).max() / np.abs(a).max():.2e}")
        start += width
    flops = predict.lower(variables, jax_inputs[1], config).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, (list, tuple)) else flops)["flops"]
    run_torch(1)()  # warm-up (oneDNN primitive caches)
    run_torch(16)()

    cases = {"flax_b1": (run_flax(1), 1), "torch_b1": (run_torch(1), 1), "flax_b1_unpinned": (run_flax(1, pin=False), 1),
             "flax_b16": (run_flax(16), 16), "torch_b16": (run_torch(16), 16),
             "flax_bf16_b1": (run_flax(1, bf16), 1), "flax_bf16_b16": (run_flax(16, bf16), 16)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))  # alternate who runs first
        for k in order:
            time.sleep(0.2)  # let the other runtime's spinning worker threads go idle first
            times[k].append(_timed(cases[k][0]))
    ips = {k: round(cases[k][1] / statistics.median(v), 2) for k, v in times.items()}
    # Batch 1 as a stream (webcam, video, a loop over photos): calls back to back, in blocks
    # alternated between the two; the rounds above leave 0.2 s idle before each call instead.
    streams: dict[str, list[float]] = {"flax_b1": [], "torch_b1": []}
    for r in range(args.repeats):
        for k in (list(streams) if r % 2 == 0 else list(reversed(streams))):
            time.sleep(0.2)
            for _ in range(3):
                cases[k][0]()  # wake the runtime's threads
            streams[k].append(statistics.median(_timed(cases[k][0]) for _ in range(5)))
    stream_ips = {k: round(1 / statistics.median(v), 2) for k, v in streams.items()}
    peak = {"float32": round(matmul_peak(jnp.float32), 1), "bfloat16": round(matmul_peak(jnp.bfloat16), 1)}
    gflops = {k: round(v * flops / 1e9, 1) for k, v in ips.items() if k.startswith("flax")}
    ratio = {"b1": round(ips["flax_b1"] / ips["torch_b1"], 3), "b16": round(ips["flax_b16"] / ips["torch_b16"], 3),
             "b1_stream": round(stream_ips["flax_b1"] / stream_ips["torch_b1"], 3),
             "b1_unpinned": round(ips["flax_b1_unpinned"] / ips["torch_b1"], 3)}
    bf16_speedup = round(ips["flax_bf16_b16"] / ips["flax_b16"], 3)

    print(json.dumps({
        "benchmark": "rnet_inference_cpu",
        "images_per_s": {
            "flax_f32": {"b1": ips["flax_b1"], "b1_unpinned": ips["flax_b1_unpinned"], "b16": ips["flax_b16"]},
            "torch_f32": {"b1": ips["torch_b1"], "b16": ips["torch_b16"]},
            "flax_bf16": {"b1": ips["flax_bf16_b1"], "b16": ips["flax_bf16_b16"]},
            "b1_stream": {"flax_f32": stream_ips["flax_b1"], "torch_f32": stream_ips["torch_b1"]},
        },
        "flax_over_torch": ratio,
        "bf16_over_f32_b16": bf16_speedup,
        "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
        "max_rel_diff_vs_torch": {"float32": float(f"{parity:.2e}")},
        "bf16_vs_f32_max_rel_diff": {"all": float(f"{bf16_err:.2e}"), **groups},
        "gflop_per_image": round(flops / 1e9, 3),
        "gflop_per_s": gflops,
        "matmul_peak_gflop_per_s": peak,
        "fraction_of_f32_matmul_peak": {k: round(v / peak["float32"], 3) for k, v in gflops.items()
                                        if "bf16" not in k},
        "fraction_of_bf16_matmul_peak": {k: round(v / peak["bfloat16"], 3) for k, v in gflops.items() if "bf16" in k},
        "cpu_native_bf16": native_bf16(),
        "targets": {"f32_b1_at_least_torch": ratio["b1"] >= 1.0, "f32_b1_stream_at_least_torch": ratio["b1_stream"] >= 1.0, "f32_b16_at_least_1.3x_torch": ratio["b16"] >= 1.3,
                    "bf16_b16_at_least_1.3x_f32": bf16_speedup >= 1.3},
        "repeats": args.repeats, "torch_threads": args.threads, "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
