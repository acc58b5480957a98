"""End-to-end reconstruction speed, method "rnet": photos -> alignment -> R-Net -> face
formation -> rendering -> results in photo pixels.

Prints one JSON line: images/second at batch 1 and 16 with a per-stage breakdown, compile
time separate. Target on 2 CPU cores: at least 8 images/s at batch 16. `device_pipeline`
(aligned crops -> R-Net -> formation [-> rendering] as one program, no host stages) is what
`run_all.py` also times on a GPU.

No trained weights ship with jaxface, so this times randomly initialised R-Net weights
(speed does not depend on the values); the output is timing only, not a reconstruction.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import alternate, emit, time_compile
from jaxface import align
from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.formation import form_faces
from jaxface.render import render_faces
from jaxface.model.synthetic import synthetic_face_model
from jaxface.reconstruct import ReconstructConfig, Reconstructor
from jaxface.rnet import RNetConfig, init_rnet, predict, save_rnet

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"


def photos(n: int):
    paths = sorted(IMAGES.glob("*.jpg"))
    imgs = [align.load_image(p) for p in paths]
    lms = [align.read_landmarks(p.with_suffix(".txt")) for p in paths]
    return [imgs[i % len(imgs)] for i in range(n)], [lms[i % len(lms)] for i in range(n)]


def stage_times(recon: Reconstructor, images, lms, repeats: int) -> dict:
    """Median seconds of each stage for one batch, run in sequence as the Reconstructor does."""
    out = {k: [] for k in ("align", "rnet", "formation", "render", "to_photo")}
    variables, cfg = recon.rnet
    for _ in range(repeats):
        t = time.perf_counter()
        aligned = [align.align_image(im, lm) for im, lm in zip(images, lms)]
        crops = np.stack([a.image for a in aligned])
        out["align"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vec = np.asarray(predict(variables, jnp.asarray(crops), cfg))
        out["rnet"].append(time.perf_counter() - t)
        t = time.perf_counter()
        # Host arrays in, as Reconstructor passes them: device-committed ones would compile anew.
        coeffs = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), Coeffs.from_vector(vec))
        jax.block_until_ready(form_faces(recon.model, coeffs, recon.camera))
        out["formation"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, out_r = jax.block_until_ready(render_faces(recon.model, coeffs, recon.camera))
        rendered, mask = out_r.image, out_r.mask
        out["render"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for k, a in enumerate(aligned):
            align.warp_to_image(np.asarray(rendered[k]), np.asarray(mask[k]), a.trans_params)
        out["to_photo"].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in out.items()}


@partial(jax.jit, static_argnames=("config", "render"))
def device_pipeline(variables, crops, model, config: RNetConfig, render: bool = True):
    """R-Net on aligned crops u8[B, 224, 224, 3], face formation and (render=True) rendering
    in one program: `Faces`, or (`Faces`, image f32[B, 224, 224, 3], mask f32[B, 224, 224])."""
    coeffs = Coeffs.from_vector(predict(variables, crops, config))
    if not render:
        return form_faces(model, coeffs, Camera())
    face, out = render_faces(model, coeffs, Camera())
    return face, out.image, out.mask


def pipeline_speed(variables, config: RNetConfig, model, batch: int, render: bool = True, repeats: int = 5) -> dict:
    """images/s of `device_pipeline` on device-resident test-photo crops (median), compile apart."""
    images, lms = photos(batch)
    crops = jax.device_put(np.stack([align.align_image(im, lm).image for im, lm in zip(images, lms)]))
    fn = lambda: device_pipeline(variables, crops, model, config, render)  # noqa: E731
    compile_s = time_compile(fn)
    seconds = alternate({"pipeline": fn}, repeats=repeats)["pipeline"]
    return {"batch": batch, "images_per_s": round(batch / seconds, 1), "ms_per_image": round(1e3 * seconds / batch, 3),
            "compile_s": round(compile_s, 2)}


def reconstruct_speed(model, weights, batch: int, repeats: int = 5) -> dict:
    """Photos -> results in photo pixels with `Reconstructor` (method "rnet", weights folder
    `weights`): first call, images/s (median) and the median ms/image of each stage."""
    recon = Reconstructor(model=model, weights=weights, quiet=True,
                          config=ReconstructConfig(method="rnet", buckets=(batch,)))
    images, lms = photos(batch)
    t = time.perf_counter()
    first = recon(images, lms)
    compile_s = time.perf_counter() - t
    if not all(s == "ok" for s in first.status):
        raise RuntimeError(f"reconstruction failed: {first.status}")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        recon(images, lms)
        times.append(time.perf_counter() - t)
    total = statistics.median(times)
    stages = stage_times(recon, images, lms, repeats)
    return {
        "first_call_s": round(compile_s, 2),
        "images_per_s": round(batch / total, 2),
        "ms_per_image": round(1e3 * total / batch, 2),
        "stage_ms_per_image": {k: round(1e3 * v / batch, 2) for k, v in stages.items()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    model = synthetic_face_model()
    result = {"method": "rnet", "weights": "random init (timing only)", "model": model.label}
    with tempfile.TemporaryDirectory() as tmp:
        save_rnet(init_rnet(jax.random.key(0), RNetConfig()), RNetConfig(), tmp)
        for batch in (1, 16):
            result[f"batch{batch}"] = reconstruct_speed(model, tmp, batch, args.repeats)
    result["target"] = "batch16 images_per_s >= 8"
    emit("reconstruct", result)


if __name__ == "__main__":
    main()
