"""End-to-end reconstruction speed, method "rnet": photos -> alignment -> R-Net -> face
formation -> rendering -> results in photo pixels [-> result files].

Prints one JSON line: images/second at batch 1 and 16 with a per-stage breakdown, compile
time separate, and `with_outputs`: photo files in, `.mat`/`.obj`/overlay files out as
`jaxface reconstruct` runs (loading the next batch, the network and writing the previous
batch overlap), against the same work done one stage after another in the same process;
`batch1_after_pause`: one photo after 0.2 s idle, XLA's CPU workers pinned (the default) or not.
Targets on 2 CPU cores: at least 12 images/s at batch 16 with outputs, and no stage slower
than the figures of issue #24 (`ISSUE_STAGE_MS`). `device_pipeline`
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

from common import alternate, emit, photo_folder, time_compile
from jaxface import align
from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.formation import form_faces
from jaxface.render import render_faces
from jaxface.model.synthetic import synthetic_face_model
from jaxface.reconstruct import ReconstructConfig, Reconstructor
from jaxface.rnet import RNetConfig, init_rnet, predict, save_rnet

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"
# Upper ends of the per-stage ms/image (batch 16) measured when issue #24 was filed.
ISSUE_STAGE_MS = {"align": 10.0, "rnet": 55.0, "formation": 7.0, "render": 24.0, "to_photo": 7.0}


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


def after_pause(model, weights, repeats: int = 7, pause_s: float = 0.2) -> dict:
    """One photo, one call after `pause_s` idle (a notebook, an interactive tool): median ms
    with XLA's CPU workers pinned one per core during the call (the default) and without,
    alternated call by call."""
    images, lms = photos(1)
    recons = {name: Reconstructor(model=model, weights=weights, quiet=True,
                                  config=ReconstructConfig(method="rnet", buckets=(1,), pin_cpu_workers=pin))
              for name, pin in (("pinned", True), ("unpinned", False))}
    for r in recons.values():
        r(images, lms)
    seconds = alternate({name: partial(r, images, lms) for name, r in recons.items()}, repeats, pause_s)
    ms = {name: round(1e3 * s, 1) for name, s in seconds.items()}
    return {"pause_s": pause_s, "ms": ms, "unpinned_over_pinned": round(ms["unpinned"] / ms["pinned"], 2)}


def outputs_speed(model, weights, batch: int = 16, n_photos: int = 64, repeats: int = 3) -> dict:
    """Photo files -> result files, as `jaxface reconstruct` does (`reconstruct_cli._pipeline`),
    against the same calls one after another (prepare, run, write), alternated in this process."""
    from jaxface.outputs import FailureLog
    from jaxface.reconstruct_cli import _pipeline, write_batch

    recon = Reconstructor(model=model, weights=weights, quiet=True,
                          config=ReconstructConfig(method="rnet", buckets=(batch,)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_folder(Path(tmp), n_photos)
        stems = [p.stem for p in paths]
        out = Path(tmp) / "out"
        out.mkdir()
        chunks = [list(range(s, min(s + batch, n_photos))) for s in range(0, n_photos, batch)]
        written = []

        def pipelined():
            written.clear()
            _pipeline(recon, chunks, paths, stems, out, model, None, lambda n, d, w, rows: written.append(d))
            assert sum(written) == n_photos, written

        def serial():
            for chunk in chunks:
                result = recon.run(recon.prepare([paths[i] for i in chunk]))
                done, _ = write_batch(result, [paths[i] for i in chunk], [stems[i] for i in chunk], out, model, None,
                                      FailureLog())
                assert done == len(chunk)

        write_ms = []
        result = recon(paths[:batch])  # compile
        for _ in range(repeats):
            t = time.perf_counter()
            write_batch(result, paths[:batch], stems[:batch], out, model, None, FailureLog())
            write_ms.append(1e3 * (time.perf_counter() - t) / batch)
        seconds = alternate({"pipelined": pipelined, "serial": serial}, repeats=repeats)
    return {"batch": batch, "photos": n_photos,
            "images_per_s": round(n_photos / seconds["pipelined"], 2),
            "serial_images_per_s": round(n_photos / seconds["serial"], 2),
            "pipelined_over_serial": round(seconds["serial"] / seconds["pipelined"], 3),
            "write_ms_per_image": round(statistics.median(write_ms), 2)}


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
        result["with_outputs"] = outputs_speed(model, tmp, 16, repeats=args.repeats)
        result["batch1_after_pause"] = after_pause(model, tmp)
    stages = result["batch16"]["stage_ms_per_image"]
    result["issue_stage_ms"] = ISSUE_STAGE_MS
    result["targets"] = {
        "with_outputs_batch16_at_least_12_images_per_s": result["with_outputs"]["images_per_s"] >= 12,
        "no_stage_slower_than_issue": all(stages[k] <= v for k, v in ISSUE_STAGE_MS.items()),
    }
    emit("reconstruct", result)


if __name__ == "__main__":
    main()
