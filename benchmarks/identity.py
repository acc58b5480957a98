"""Identity networks: parity and speed of the Flax dlib face-recognition ResNet against dlib
itself, ArcFace conversion parity, and (--fit) what the identity term does to fitting.

Prints ONE JSON line. dlib and Flax run in this process on the same 150x150 chips (dlib's
own: HOG detector, 5-point predictor, get_face_chip 150 / 0.25), alternating run by run;
figures are medians. "loss_and_grad" is the perceptual loss and its gradient from 224 crops
(what a training or fitting step adds). Photos: /work/shared/reference/images when present, else tests/data/images.

--fit: every photo is aligned (224 crop, its 5 points) and fitted with `jaxface.fit` twice,
without and with the identity term (dlib, weight 0.2), on the default face model (the Basel
model when installed, else the SYNTHETIC one). Reported: the cosine similarity of dlib
embeddings of each photo and of its rendering (the photometric region composited over the
photo, in the photo's alignment) at the pose-only start, after the plain fit, and after the
fit with the identity term. The term optimizes this very similarity, so "with" is not an
independent judge; compare "without" against "start" for that.

    python benchmarks/identity.py [--repeats 7] [--fit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, time_compile  # noqa: E402

from jaxface.align import align_image, load_image, read_landmarks  # noqa: E402
from jaxface.conventions import flip_y  # noqa: E402
from jaxface.identity import cosine_distance, load_identity, perceptual_loss  # noqa: E402
from jaxface.identity.network import dlib_embed, dlib_model_path  # noqa: E402

REFERENCE = Path("/work/shared/reference/images")
TESTS = Path(__file__).parent.parent / "tests" / "data" / "images"
BATCH = 16


def photos() -> list[Path]:
    folder = REFERENCE if REFERENCE.is_dir() else TESTS
    return sorted(folder.glob("*.jpg"))


def dlib_chips(paths):
    import dlib

    from jaxface.detect import model_dir

    find = dlib.get_frontal_face_detector()
    predict = dlib.shape_predictor(str(model_dir() / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for p in paths:
        img = load_image(p)
        box = max(find(img, 1), key=lambda r: r.area())
        chips.append(dlib.get_face_chip(img, predict(img, box), size=150, padding=0.25))
    return np.stack(chips)


def speed(ident, chips, crops, lm, repeats: int) -> dict:
    """ms per face at batch 16: Flax and dlib embeddings of chips; the perceptual loss and its
    gradient from 224 crops (alignment, two embeddings, backward through one)."""
    import dlib

    reference = dlib.face_recognition_model_v1(str(dlib_model_path()))
    batch = np.stack([chips[i % len(chips)] for i in range(BATCH)])
    x = jax.device_put(batch)
    pick = np.arange(BATCH) % len(crops)
    photos, points = crops[pick], lm[pick]
    rendered = jnp.clip(photos + 0.05, 0.0, 1.0)
    loss_grad = jax.jit(jax.grad(lambda r: jnp.sum(perceptual_loss(ident.net, ident.variables, r, photos, points))))
    compile_s = time_compile(dlib_embed, ident.variables, x)
    loss_compile_s = time_compile(loss_grad, rendered)
    cases = {"flax": lambda: dlib_embed(ident.variables, x).block_until_ready(),
             "dlib": lambda: reference.compute_face_descriptor(list(batch)),
             "loss_and_grad": lambda: loss_grad(rendered).block_until_ready()}
    times = {k: [] for k in cases}
    for r in range(repeats):
        for k in (cases if r % 2 == 0 else reversed(list(cases))):
            t = time.perf_counter()
            cases[k]()
            times[k].append(time.perf_counter() - t)
    ms = {k: round(1000 * statistics.median(v) / BATCH, 2) for k, v in times.items()}
    return {"ms_per_face_b16": ms, "flax_over_dlib_speed": round(ms["dlib"] / ms["flax"], 3),
            "compile_s": {"embed": round(compile_s, 2), "loss_and_grad": round(loss_compile_s, 2)}}


def arcface_parity() -> float:
    """Max relative difference, iresnet50 with random weights: converted Flax vs the torch definition."""
    import torch

    from jaxface.identity.arcface import arcface_embed, torch_state_to_variables
    from jaxface.identity.torch_reference import TorchIResNet, randomize_

    net = randomize_(TorchIResNet(), seed=0)
    variables, config = torch_state_to_variables(net.state_dict())
    x = np.random.default_rng(0).uniform(size=(2, 112, 112, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(2 * x - 1).permute(0, 3, 1, 2).contiguous()).numpy()
    got = np.asarray(jax.jit(arcface_embed, static_argnums=2)(variables, x, config))
    return float(np.abs(got - want).max() / np.abs(want).max())


def fit_similarity(ident, paths) -> dict:
    from jaxface.fit import FitConfig, fit
    from jaxface.losses import region_mask
    from jaxface.reconstruct import default_face_model
    from jaxface.render import render_faces

    model = default_face_model(quiet=True)
    aligned = [align_image(load_image(p), read_landmarks(p.with_suffix(".txt"))) for p in paths]
    crops = jnp.asarray(np.stack([a.image for a in aligned]), jnp.float32) / 255.0
    lm = jnp.asarray(np.stack([flip_y(a.landmarks) for a in aligned]), jnp.float32)
    embed = jax.jit(lambda images: ident.net(ident.variables, images, lm))
    target = embed(crops)

    def similarity(coeffs):
        _, out = render_faces(model, coeffs, backgrounds=crops)
        keep = jax.vmap(lambda t: region_mask(model, t))(out.fragments.tri_id)[..., None] > 0
        return 1.0 - np.asarray(cosine_distance(embed(jnp.where(keep, out.image, crops)), target))

    out, seconds = {"face_model": model.label, "photos": len(paths)}, {}
    start = fit(model, crops, lm, config=FitConfig(photo_steps=0))
    out["cos_start"] = similarity(start.coeffs)
    for name, identity in (("without", None), ("with", ident)):
        t = time.perf_counter()
        res = fit(model, crops, lm, identity=identity)
        jax.block_until_ready(res.loss)
        seconds[name] = round(time.perf_counter() - t, 1)
        out[f"cos_{name}_identity"] = similarity(res.coeffs)
    for k in [k for k in out if k.startswith("cos_")]:
        v = out[k]
        out[k] = {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                  "per_photo": [round(float(c), 4) for c in v]}
    out["fit_seconds_incl_compile"] = seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds (medians are reported)")
    parser.add_argument("--fit", action="store_true", help="also fit the photos without / with the identity term")
    args = parser.parse_args()

    t = time.perf_counter()
    ident = load_identity("dlib")
    read_s = time.perf_counter() - t
    paths = photos()
    chips = dlib_chips(paths)

    import dlib

    reference = dlib.face_recognition_model_v1(str(dlib_model_path()))
    want = np.stack([np.asarray(reference.compute_face_descriptor(c)) for c in chips])
    got = np.asarray(dlib_embed(ident.variables, jnp.asarray(chips)))
    max_abs = float(np.abs(got - want).max())
    aligned = [align_image(load_image(p), read_landmarks(p.with_suffix(".txt"))) for p in paths]
    crops = jnp.asarray(np.stack([a.image for a in aligned]), jnp.float32) / 255.0
    lm = jnp.asarray(np.stack([flip_y(a.landmarks) for a in aligned]), jnp.float32)
    own = 1.0 - np.asarray(cosine_distance(jax.jit(ident.net.__call__)(ident.variables, crops, lm), jnp.asarray(got)))
    arc = arcface_parity()

    figures = {
        "photos": len(paths), "photo_folder": str(paths[0].parent),
        "dlib_max_abs_diff": float(f"{max_abs:.2e}"),
        "dlib_max_abs_descriptor": round(float(np.abs(want).max()), 3),
        "own_alignment_cos_vs_dlib_chips": {"min": round(float(own.min()), 4), "mean": round(float(own.mean()), 4)},
        "arcface_r50_max_rel_diff_vs_torch": float(f"{arc:.2e}"),
        "read_dat_s": round(read_s, 2),
        **speed(ident, chips, crops, lm, args.repeats),
    }
    if args.fit:
        figures["fit"] = fit_similarity(ident, paths)
    figures["targets"] = {"dlib_parity_1e-4": max_abs <= 1e-4, "arcface_parity_1e-4": arc <= 1e-4}
    figures["load_avg_1min"] = round(os.getloadavg()[0], 2)
    emit("identity", figures)


if __name__ == "__main__":
    main()
