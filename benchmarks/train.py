"""Training speed on CPU at batch 16: the full weakly-supervised step, and its two halves.

Prints ONE JSON line: images/s of the jitted train step (R-Net forward+backward in train-mode
BatchNorm, batched face formation + rendering + losses, Adam update), and, timed separately
in the same process (alternating, medians), the network's forward+backward alone (gradient
of a loss on its 257 outputs) and the renderer's (gradient of the photo loss terms w.r.t. the
coefficients). Compile times are reported apart. Inputs: the aligned test photos with the
embedded synthetic face model (speed only; no model is trained here).

    .venv/bin/python benchmarks/train.py [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate, emit, time_compile  # noqa: E402

from jaxface.data import AugmentConfig, PhotoDataset, to_device  # noqa: E402
from jaxface.losses import objective  # noqa: E402
from jaxface.model.synthetic import synthetic_face_model  # noqa: E402
from jaxface.rnet import RNet, RNetConfig, init_rnet, to_network_input  # noqa: E402
from jaxface.synth_data import sample_coeffs  # noqa: E402
from jaxface.train import TrainConfig, init_state, make_spec, train_step, weak_terms  # noqa: E402

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"


def train_speed(model, b: int, repeats: int = 3, halves: bool = True) -> dict:
    """images/s of the jitted train step and (halves=True) of its two halves at batch `b`
    (medians of alternated runs), compile times apart."""
    spec = make_spec(TrainConfig(batch_size=b), RNetConfig())
    state = init_state(init_rnet(jax.random.key(0)), spec)
    batch = to_device(PhotoDataset(IMAGES, b, seed=0, augment=AugmentConfig.none()).batch(0))
    photos = batch.images.astype(jnp.float32) / 255.0
    coeffs = sample_coeffs(jax.random.key(1), b)

    @jax.jit
    def network_grad(params, batch_stats, images):
        def loss(p):
            out, upd = RNet(spec.rnet).apply({"params": p, "batch_stats": batch_stats},
                                             to_network_input(images, spec.rnet), train=True, mutable=["batch_stats"])
            return jnp.mean(out ** 2), upd
        return jax.grad(loss, has_aux=True)(params)

    @jax.jit
    def renderer_grad(c, images, landmarks, model):  # the model an argument, not constants to fold
        return jax.grad(lambda c: objective(weak_terms(model, c, images, landmarks, spec)[0], spec.loss_weights()))(c)

    fns = {
        "train_step": lambda: train_step(state, batch, model, spec),
        "network_fwd_bwd": lambda: network_grad(state.params, state.batch_stats, batch.images),
        "renderer_fwd_bwd": lambda: renderer_grad(coeffs, photos, batch.landmarks, model),
    }
    if not halves:
        fns = {"train_step": fns["train_step"]}
    compile_s = {k: round(time_compile(f), 2) for k, f in fns.items()}
    seconds = alternate(fns, repeats=repeats)
    return {
        "batch": b,
        "images_per_s": {k: round(b / v, 3) for k, v in seconds.items()},
        "seconds_per_batch": {k: round(v, 4) for k, v in seconds.items()},
        "compile_s": compile_s,
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians are reported)")
    args = parser.parse_args()
    emit("train_cpu", {
        **train_speed(synthetic_face_model(0), args.batch, args.repeats),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "note": "aligned tests/data photos, embedded synthetic face model, weak (photo) loss",
    })


if __name__ == "__main__":
    main()
