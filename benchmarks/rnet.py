"""R-Net inference speed on CPU: Flax (float32, bfloat16) versus the same network in PyTorch.

Prints ONE JSON line. Both run in this process on the same converted weights, alternating
run by run (other work on the machine then hits both alike); figures are medians.
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

import jax
import numpy as np

from common import alternate, time_compile
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


def flax_run(variables, images, config: RNetConfig):
    """A callable running `predict` once on device-resident `images` and waiting for it."""
    return lambda: predict(variables, images, config).block_until_ready()


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


def main() -> None:
    import torch

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

    def run_flax(b, cfg=config):
        return flax_run(variables, jax_inputs[b], cfg)

    def run_torch(b):
        def f():
            with torch.inference_mode():
                return net(torch_inputs[b])
        return f

    compile_s = {f"float32_b{b}": _timed(run_flax(b)) for b in (1, 16)}
    compile_s["bfloat16_b16"] = _timed(run_flax(16, bf16))
    with torch.inference_mode():
        ref = net(torch_inputs[16]).numpy()
    parity = float(np.abs(np.asarray(run_flax(16)()) - ref).max() / np.abs(ref).max())
    bf16_dev = float(np.abs(np.asarray(predict(variables, jax_inputs[16], bf16)) - ref).max() / np.abs(ref).max())
    run_torch(1)()  # warm-up (oneDNN primitive caches)
    run_torch(16)()

    cases = {"flax_b1": (run_flax(1), 1), "torch_b1": (run_torch(1), 1),
             "flax_b16": (run_flax(16), 16), "torch_b16": (run_torch(16), 16),
             "flax_bf16_b16": (run_flax(16, bf16), 16)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))  # alternate who runs first
        for k in order:
            time.sleep(0.2)  # let the other runtime's spinning worker threads go idle first
            times[k].append(_timed(cases[k][0]))
    ips = {k: round(cases[k][1] / statistics.median(v), 2) for k, v in times.items()}

    print(json.dumps({
        "benchmark": "rnet_inference_cpu",
        "images_per_s": {
            "flax_f32": {"b1": ips["flax_b1"], "b16": ips["flax_b16"]},
            "torch_f32": {"b1": ips["torch_b1"], "b16": ips["torch_b16"]},
            "flax_bf16": {"b16": ips["flax_bf16_b16"]},
        },
        "flax_over_torch": {"b1": round(ips["flax_b1"] / ips["torch_b1"], 3),
                            "b16": round(ips["flax_b16"] / ips["torch_b16"], 3)},
        "target_b16_ratio": 1.0,
        "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
        "max_rel_diff_vs_torch": {"float32": float(f"{parity:.2e}"), "bfloat16": float(f"{bf16_dev:.2e}")},
        "repeats": args.repeats, "torch_threads": args.threads, "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
