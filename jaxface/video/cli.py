"""`jaxface video CLIP -o OUT`: reconstruct a clip with one identity and smooth motion."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def video_cli(argv) -> int:
    from jaxface.video.track import METHODS, VideoConfig

    d = VideoConfig()
    p = argparse.ArgumentParser(
        prog="jaxface video",
        description="Reconstruct the face in a video: one identity and albedo for the whole clip, per-frame "
        "expression, pose, light and translation with a temporal smoothness prior. Writes OUT/coeffs.npz "
        "(per-frame coefficients, frame indices, status), OUT/overlay.mp4, OUT/identity.mat and "
        "OUT/identity_mesh.obj (and OUT/meshes/frame_NNNNNN.obj with --meshes). Landmarks come from "
        "CLIP.landmarks.npy beside the clip (numpy array [frames, 5 or 68, 2], pixels, NaN rows where there is "
        "no face), else from the face detector ([detect] extra). Frames without a face are interpolated from "
        "their neighbours and listed in OUT/failures.csv.",
    )
    p.add_argument("clip", type=Path, help="video file (anything OpenCV's FFmpeg decodes: .mp4, .avi, .mov, ...)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--every", type=int, default=1, help="use every N-th frame (default 1: all)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (after --every)")
    p.add_argument("--landmarks", type=Path, default=None, help="landmark file (default CLIP.landmarks.npy if present)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="rnet (R-Net per frame, then refinement), fit (refinement from the mean face), "
                   "auto (rnet if trained weights exist, else fit)")
    p.add_argument("--bfm", type=Path, default=None, help="Basel model folder (default ./BFM, else the SYNTHETIC model)")
    p.add_argument("--weights", type=Path, default=None, help="converted R-Net weights folder (default weights/rnet)")
    p.add_argument("--window", type=int, default=d.window, help=f"frames per tracking window (default {d.window})")
    p.add_argument("--overlap", type=int, default=d.overlap, help=f"frames shared by windows (default {d.overlap})")
    p.add_argument("--identity-frames", type=int, default=d.identity_frames,
                   help=f"frames the identity is fitted on (default {d.identity_frames})")
    p.add_argument("--landmark-only", action="store_true", help="skip the photometric stages (fast, coarser)")
    p.add_argument("--meshes", action="store_true", help="also write a posed mesh per frame (OUT/meshes/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.every < 1 or (args.max_frames is not None and args.max_frames < 1):
        p.error("--every and --max-frames must be at least 1")
    try:
        config = VideoConfig(method=args.method, window=args.window, overlap=args.overlap,
                             identity_frames=args.identity_frames)
    except ValueError as e:
        p.error(str(e))
    if args.landmark_only:
        config = config.landmark_only()

    from jaxface.outputs import FailureLog
    from jaxface.reconstruct import default_face_model
    from jaxface.video.io import iter_frames, load_landmarks, sidecar_path, video_fps
    from jaxface.video.outputs import save_video_outputs
    from jaxface.video.track import INTERPOLATED, reconstruct_video

    fps = video_fps(args.clip) / args.every  # checks the clip before anything slow
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"jaxface video: cannot create the output folder {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    lm_file = args.landmarks or (sidecar_path(args.clip) if sidecar_path(args.clip).is_file() else None)
    landmarks, detector = None, None
    if lm_file is not None:
        landmarks = load_landmarks(lm_file)[:: args.every]
        print(f"landmarks: {lm_file}", file=sys.stderr)
    else:
        from jaxface.detect import Detector

        detector = Detector()  # ImportError with the install command when the extra is missing
        print("landmarks: dlib detector (no landmark file)", file=sys.stderr)
    model = default_face_model(args.bfm)

    indices: list[int] = []

    def frames():
        for index, frame in iter_frames(args.clip, args.every, args.max_frames):
            indices.append(index)
            yield frame

    result = reconstruct_video(frames(), landmarks, model=model, weights=args.weights, config=config,
                               detector=detector, progress=not args.no_progress)
    print(f"model: {model.label}; method: {result.method}", file=sys.stderr)
    again = (f for _, f in iter_frames(args.clip, args.every, args.max_frames))
    try:
        written = save_video_outputs(args.out, model, result, again, np.asarray(indices), fps, meshes=args.meshes,
                                     alpha=config.overlay_alpha, batch=config.batch, progress=not args.no_progress)
    except OSError as e:  # OutputWriteError names the file and the fix
        print(f"jaxface video: {e}", file=sys.stderr)
        return 2
    missing = np.flatnonzero(result.status == INTERPOLATED)
    failures = FailureLog()
    for pos in missing:
        failures.add(f"{args.clip.name}#frame{indices[pos]}", "landmarks", f"{result.reasons[pos]} (interpolated)")
    if len(failures):
        failures.write(args.out / "failures.csv")
    else:
        (args.out / "failures.csv").unlink(missing_ok=True)  # from an earlier run
    print(f"{len(indices)} frames, {len(indices) - len(missing)} tracked, {len(missing)} interpolated "
          f"-> {args.out}: " + ", ".join(Path(v).name for v in written.values())
          + (f" (see {args.out / 'failures.csv'})" if len(failures) else ""))
    return 0
