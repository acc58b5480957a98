"""Video reconstruction (`jaxface.reconstruct_video`) against reconstructing each frame on its
own, on a synthetic clip with known trajectories; prints ONE JSON line.

The clip (`jaxface.video.synthetic.make_clip`, embedded synthetic model): one identity,
sinusoidal head motion (yaw +-25, pitch +-8, roll +-5 degrees), smoothly varying expression,
~1.5 px Gaussian landmark noise per frame, written to a temporary .mp4 (codec mp4v) with a
landmark sidecar and decoded back, as `jaxface video` reads it.

- tracked: `reconstruct_video`, method "fit" (identity by `fit_set` on spread frames, then
  windows with id/tex frozen and the temporal prior), then the output files (`coeffs.npz`,
  `overlay.mp4`, identity files) as `jaxface video` writes them.
- independent: `Reconstructor(method="fit")` on every frame with the default single-image
  schedule (`FitConfig()`, what `jaxface reconstruct` runs), batch 16.

Figures: landmark jitter (mean |second difference| of the projected landmarks over time,
frame pixels) and pose jitter (degrees) for both and for the true trajectory; landmark error
against the noise-free landmarks; neutral identity shape error (`evaluate.mesh_error`, mm) of
the clip's identity against every single frame's (best and median); frames/s of the fit path
and of the R-Net path at batch 16. No trained weights ship with jaxface, so the R-Net path
runs randomly initialised weights: its figure is timing only. Each path runs once on the first
`--warm` frames (compiles every program: windows, identity set and batches have fixed sizes)
and is then timed on the whole clip (steady state).

    cd benchmarks && python video.py [--frames 96] [--landmark-only] [--temporal EXP,ANGLE,GAMMA,TRANS]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import emit
from jaxface.evaluate import mesh_error
from jaxface.fit import FitConfig, TemporalWeights
from jaxface.formation import face_shape
from jaxface.model.synthetic import synthetic_face_model
from jaxface.reconstruct import ReconstructConfig, Reconstructor
from jaxface.video import VideoConfig, read_video, reconstruct_video, save_video_outputs, write_video
from jaxface.video.metrics import jitter
from jaxface.video.synthetic import ClipConfig, make_clip

MM = 100.0  # model units (decimetres) -> mm


def neutral_error_mm(model, ident, true_ident) -> float:
    kp, tris = np.asarray(model.keypoints), np.asarray(model.tris)
    pred = np.asarray(face_shape(model, jnp.asarray(ident), jnp.zeros(64)))
    gt = np.asarray(face_shape(model, jnp.asarray(true_ident), jnp.zeros(64)))
    return mesh_error(pred, tris, gt, pred[kp], gt[kp], gt[kp[30]], icp_iters=20).mean


def timed_video(model, frames, lms, config, weights, out_dir, warm: int) -> tuple:
    """(result, compile_s, reconstruct_s, outputs_s) of the whole clip after a warm-up on `warm` frames."""
    def run(f, lm, out):
        t0 = time.perf_counter()
        res = reconstruct_video(f, lm, model=model, weights=weights, config=config, quiet=True)
        t1 = time.perf_counter()
        save_video_outputs(out, model, res, f, np.arange(len(f)), 25.0, batch=config.batch)
        return res, t1 - t0, time.perf_counter() - t1

    t0 = time.perf_counter()
    run(frames[:warm], lms[:warm], out_dir / "warm")
    compile_s = time.perf_counter() - t0
    res, rec_s, out_s = run(frames, lms, out_dir / "clip")
    return res, compile_s, rec_s, out_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--warm", type=int, default=16, help="frames of the warm-up (compile) run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--landmark-only", action="store_true", help="no photometric stages (quick tuning runs)")
    p.add_argument("--temporal", type=str, default=None, help="EXP,ANGLE,GAMMA,TRANS weights (default: TemporalWeights())")
    p.add_argument("--skip-rnet", action="store_true")
    args = p.parse_args()

    model = synthetic_face_model()
    clip = make_clip(model, jax.random.key(args.seed), ClipConfig(frames=args.frames))
    tw = TemporalWeights(*map(float, args.temporal.split(","))) if args.temporal else TemporalWeights()
    config = VideoConfig(method="fit")
    config = dataclasses.replace(config, track=dataclasses.replace(config.track, temporal=tw),
                                 rnet_track=dataclasses.replace(config.rnet_track, temporal=tw))
    indep_fit = FitConfig()
    if args.landmark_only:
        config, indep_fit = config.landmark_only(), dataclasses.replace(indep_fit, photo_steps=0)
    result = {"model": model.label, "frames": args.frames, "landmark_noise_px": ClipConfig().scene.landmark_noise_px,
              "temporal": dataclasses.asdict(tw),
              "schedules": {k: [getattr(config, k).landmark_steps, getattr(config, k).photo_steps]
                            for k in ("identity", "track", "rnet_identity", "rnet_track")}
              | {"independent": [indep_fit.landmark_steps, indep_fit.photo_steps]},
              "window": config.window, "overlap": config.overlap, "identity_frames": config.identity_frames}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_video(tmp / "clip.mp4", clip.frames, clip.fps)
        frames = read_video(tmp / "clip.mp4").frames  # what `jaxface video` decodes (mp4v is lossy)
        lms = clip.landmarks

        tracked, compile_s, rec_s, out_s = timed_video(model, frames, lms, config, None, tmp, args.warm)
        fit_fps = {"compile_s": round(compile_s, 1), "reconstruct_frames_per_s": round(args.frames / rec_s, 2),
                   "with_outputs_frames_per_s": round(args.frames / (rec_s + out_s), 2)}

        indep_cfg = ReconstructConfig(method="fit", buckets=(16,), fit=indep_fit)
        recon = Reconstructor(model=model, config=indep_cfg, quiet=True)
        recon(list(frames[:16]), list(lms[:16]))
        t0 = time.perf_counter()
        indep = recon(list(frames), list(lms))
        indep_s = time.perf_counter() - t0

        if not args.skip_rnet:
            from jaxface.rnet import RNetConfig, init_rnet, save_rnet

            save_rnet(init_rnet(jax.random.key(0), RNetConfig()), RNetConfig(), tmp / "rnet")
            rcfg = dataclasses.replace(config, method="rnet")
            _, r_compile, r_rec, r_out = timed_video(model, frames, lms, rcfg, tmp / "rnet", tmp / "r", args.warm)
            result["rnet_path"] = {"weights": "random init (timing only)", "batch": rcfg.batch,
                                   "compile_s": round(r_compile, 1),
                                   "reconstruct_frames_per_s": round(args.frames / r_rec, 2),
                                   "with_outputs_frames_per_s": round(args.frames / (r_rec + r_out), 2)}

    ok = (tracked.status == 0) & indep.ok
    lm_j = {"tracked": jitter(tracked.landmarks, ok), "independent": jitter(indep.landmarks, ok),
            "truth": jitter(clip.true_landmarks)}
    pose_j = {"tracked": jitter(np.rad2deg(tracked.coeffs.angle), ok),
              "independent": jitter(np.rad2deg(np.asarray(indep.coeffs.angle)), ok),
              "truth": jitter(np.rad2deg(np.asarray(clip.coeffs.angle)))}
    lm_err = {"tracked": float(np.linalg.norm(tracked.landmarks - clip.true_landmarks, axis=-1)[ok].mean()),
              "independent": float(np.linalg.norm(indep.landmarks - clip.true_landmarks, axis=-1)[ok].mean()),
              "input_noise": float(np.linalg.norm(clip.landmarks - clip.true_landmarks, axis=-1).mean())}
    true_id = np.asarray(clip.coeffs.id[0])
    singles = np.array([neutral_error_mm(model, np.asarray(indep.coeffs.id[i]), true_id) for i in np.flatnonzero(ok)])
    ident = {"tracked": neutral_error_mm(model, np.asarray(tracked.identity.id), true_id),
             "best_single_frame": float(singles.min()), "median_single_frame": float(np.median(singles)),
             "mean_face": neutral_error_mm(model, np.zeros(80), true_id)}
    rnd = lambda d, k=3: {key: round(v, k) for key, v in d.items()}  # noqa: E731
    result.update({
        "landmark_jitter_px": rnd(lm_j), "pose_jitter_deg": rnd(pose_j), "landmark_error_px": rnd(lm_err),
        "identity_error_mm": rnd(ident),
        "jitter_reduction": {"landmarks": round(1 - lm_j["tracked"] / lm_j["independent"], 3),
                             "pose": round(1 - pose_j["tracked"] / pose_j["independent"], 3)},
        "fit_path": fit_fps,
        "independent_frames_per_s": round(args.frames / indep_s, 2),
    })
    result["targets"] = {
        "landmark_jitter_50pct_lower": bool(lm_j["tracked"] <= 0.5 * lm_j["independent"]),
        "pose_jitter_50pct_lower": bool(pose_j["tracked"] <= 0.5 * pose_j["independent"]),
        "identity_below_best_single_frame": bool(ident["tracked"] < ident["best_single_frame"]),
        "rnet_path_5_frames_per_s": bool(result.get("rnet_path", {}).get("with_outputs_frames_per_s", 0) >= 5),
    }
    emit("video", result)


if __name__ == "__main__":
    main()
