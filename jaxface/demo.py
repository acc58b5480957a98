"""`jaxface demo`: the whole pipeline on the embedded SYNTHETIC morphable model, no download.

1. Synthetic faces with known coefficients are rendered over random backgrounds and pasted
   into larger "photos" (random offsets), with noisy 68-point landmarks as a detector would
   give. The photos and their 5-point `.txt` files are written to OUT/inputs/.
2. `Reconstructor` aligns each photo, recovers the coefficients (R-Net when trained weights
   are present, else gradient fitting) and renders the result.
3. OUT/NAME.mat, NAME_mesh.obj and NAME_overlay.png are written for every photo, plus
   OUT/summary.json with the recovered-versus-true errors, which are printed, and
   OUT/index.html, a page of the results with a 3D viewer.

Everything here is synthetic and labelled so: it shows the machinery works and how well it
recovers known faces, not the accuracy on real photos (that needs the Basel model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxface import formation
from jaxface.conventions import five_from_68
from jaxface.detect import write_landmarks_txt
from jaxface.fileio import write_text_atomic
from jaxface.fit import FitConfig
from jaxface.outputs import save_outputs, save_png
from jaxface.reconstruct import ReconstructConfig, Reconstructor
from jaxface.report import report_after_run
from jaxface.synth_data import SceneConfig, make_scene, to_uint8


def make_photos(model, key, count: int, canvas: tuple[int, int] = (300, 340)):
    """Synthetic photos u8[count, H, W, 3] (the 224x224 scene pasted at a random offset on a
    larger background), their noisy 68-point landmarks in photo pixels (y down), the noise-free
    ones, and the scene (with the true coefficients)."""
    import cv2

    k_scene, k_off = jax.random.split(key)
    scene = make_scene(model, k_scene, batch=count, config=SceneConfig(max_yaw_deg=25.0))
    crops = to_uint8(scene.images)
    h, w = canvas
    offsets = np.asarray(jax.random.randint(k_off, (count, 2), 0, np.array([w - 224, h - 224]) + 1))
    photos = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        # Background: the scene's own corner colour stretched to the canvas, then the scene pasted.
        photos[i] = cv2.resize(crops[i, :16, :16], (w, h), interpolation=cv2.INTER_LINEAR)
        ox, oy = offsets[i]
        photos[i, oy : oy + 224, ox : ox + 224] = crops[i]
    shift = offsets[:, None, :].astype(np.float32)
    return photos, np.asarray(scene.landmarks) + shift, np.asarray(scene.true_landmarks) + shift, scene


def run(out_dir: Path, count: int = 4, seed: int = 0, steps: int = 60, quiet: bool = False) -> dict:
    """Run the demo; returns the summary written to OUT/summary.json."""
    from jaxface.model.synthetic import synthetic_face_model

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    say = (lambda *a: None) if quiet else print
    say("jaxface demo: SYNTHETIC morphable model and synthetic photos (no download needed)")
    model = synthetic_face_model()
    photos, lm68, true_lm, scene = make_photos(model, jax.random.key(seed), count)
    names = [f"synthetic_{i:02d}" for i in range(count)]
    for name, photo, lm in zip(names, photos, lm68):
        save_png(out_dir / "inputs" / f"{name}.png", photo)
        write_landmarks_txt(out_dir / "inputs" / f"{name}.txt", five_from_68(lm))
    t_setup = time.perf_counter() - t0

    config = ReconstructConfig(buckets=(count,), fit=FitConfig(landmark_steps=steps, photo_steps=steps))
    recon = Reconstructor(model=model, config=config, quiet=True)
    say(f"model: {model.label}; method: {recon.method}; {count} photos -> {out_dir}/")
    t1 = time.perf_counter()
    result = recon(list(photos), list(lm68))
    t_recon = time.perf_counter() - t1
    for i, name in enumerate(names):
        if result.status[i] == "ok":
            save_outputs(result, i, out_dir, name, model.tris)

    # Recovered versus true. Shapes share the model frame: per-vertex distance, no alignment.
    mm = 100.0  # decimetres -> millimetres
    true_shape = np.asarray(scene.shapes)
    mean_face = np.asarray(model.mean_shape)
    shape_err = np.linalg.norm(result.shape - true_shape, axis=-1).mean(axis=1) * mm
    mean_err = np.linalg.norm(mean_face[None] - true_shape, axis=-1).mean(axis=1) * mm
    lm_err = np.linalg.norm(result.landmarks - true_lm, axis=-1).mean(axis=1)
    angle_err = np.rad2deg(np.abs(np.asarray(result.coeffs.angle) - np.asarray(scene.coeffs.angle))).max(axis=1)
    true_colors = np.asarray(formation.form_faces(model, scene.coeffs).albedo)
    albedo_err = np.abs(result.albedo - true_colors).mean(axis=(1, 2)) * 255
    per_image = [
        {"name": n, "status": s, "shape_error_mm": round(float(a), 3), "mean_face_error_mm": round(float(b), 3),
         "landmark_error_px": round(float(c), 2), "max_angle_error_deg": round(float(d), 2),
         "albedo_error_0_255": round(float(e), 2)}
        for n, s, a, b, c, d, e in zip(names, result.status, shape_err, mean_err, lm_err, angle_err, albedo_err)
    ]
    summary = {
        "model": model.label,
        "synthetic": True,
        "method": result.method,
        "images": count,
        "succeeded": int(result.ok.sum()),
        "seconds": {"setup": round(t_setup, 2), "reconstruct": round(t_recon, 2),
                    "total": round(time.perf_counter() - t0, 2)},
        "mean": {k: round(float(np.mean([p[k] for p in per_image])), 3)
                 for k in ("shape_error_mm", "mean_face_error_mm", "landmark_error_px", "max_angle_error_deg",
                           "albedo_error_0_255")},
        "per_image": per_image,
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(f"{'image':<14}{'shape mm':>10}{'mean face mm':>14}{'landmarks px':>14}{'angle deg':>11}")
        for p in per_image:
            print(f"{p['name']:<14}{p['shape_error_mm']:>10.2f}{p['mean_face_error_mm']:>14.2f}"
                  f"{p['landmark_error_px']:>14.2f}{p['max_angle_error_deg']:>11.2f}")
        m = summary["mean"]
        print(f"mean: shape {m['shape_error_mm']:.2f} mm (mean face {m['mean_face_error_mm']:.2f} mm), "
              f"landmarks {m['landmark_error_px']:.2f} px, pose {m['max_angle_error_deg']:.2f} deg")
        print(f"wrote {out_dir}/NAME.mat, NAME_mesh.obj, NAME_overlay.png, inputs/, summary.json, index.html "
              f"in {summary['seconds']['total']:.0f} s (SYNTHETIC data)")
    report_after_run(out_dir, quiet=quiet)
    return summary


def demo_cli(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jaxface demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("-n", "--count", type=int, default=4, help="number of synthetic photos (default 4)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the synthetic scenes")
    p.add_argument("--steps", type=int, default=60, help="fitting steps per stage (default 60)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    summary = run(args.out, args.count, args.seed, args.steps)
    return 0 if summary["succeeded"] else 1

