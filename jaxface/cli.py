"""The `jaxface` command line: one subcommand per job, each with --help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _convert_bfm(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface convert-bfm",
        description="Build BFM_model_front.mat (the PyTorch reference's layout) from 01_MorphableModel.mat + "
        "Exp_Pca.bin. Runs once; later loads use the converted file.",
    )
    p.add_argument("--bfm", type=Path, default=None, help="folder with 01_MorphableModel.mat and Exp_Pca.bin (default: ./BFM or $JAXFACE_BFM_DIR)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: BFM_model_front.mat in the --bfm folder)")
    args = p.parse_args(argv)
    from jaxface.model import bfm

    out = bfm.convert_bfm09(args.bfm, args.out)
    print(f"wrote {args.out or (args.bfm or bfm.paths.bfm_dir()) / 'BFM_model_front.mat'}: "
          f"{out['meanshape'].size // 3} vertices, {out['tri'].shape[0]} triangles")
    return 0


def _reconstruct(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface reconstruct",
        description="Reconstruct faces in photos: writes NAME.mat (TF and PyTorch reference keys), NAME.obj and "
        "NAME_overlay.png per photo, and failures.csv. Landmarks come from NAME.txt beside each photo (five "
        "lines 'x y'), else from the face detector when the [detect] extra is installed. Resumable: photos "
        "whose outputs exist are skipped unless --overwrite.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="photos or folders of photos (.jpg .jpeg .png .bmp)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--bfm", type=Path, default=None,
                   help="folder with the Basel model (BFM_model_front.mat, or 01_MorphableModel.mat + Exp_Pca.bin); "
                   "default ./BFM, else the SYNTHETIC model with a notice")
    p.add_argument("--weights", type=Path, default=None, help="converted R-Net weights folder (default weights/rnet)")
    from jaxface.reconstruct import METHODS

    p.add_argument("--method", choices=METHODS, default="auto",
                   help="rnet (network), fit (gradient fitting), rnet+fit, auto (rnet if weights exist, else fit)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per batch (default 16)")
    p.add_argument("--steps", type=int, default=None, help="fitting steps per stage (default: FitConfig's)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose outputs exist")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")

    from jaxface import outputs
    from jaxface.detect import list_images
    from jaxface.fit import FitConfig
    from jaxface.outputs import save_outputs
    from jaxface.reconstruct import ReconstructConfig, Reconstructor, default_face_model

    fit_cfg = FitConfig() if args.steps is None else FitConfig(landmark_steps=args.steps, photo_steps=args.steps)
    buckets = tuple(sorted({b for b in (1, 4, args.batch_size) if b <= args.batch_size}))
    config = ReconstructConfig(method=args.method, buckets=buckets, fit=fit_cfg)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        model = default_face_model(args.bfm)
        recon = Reconstructor(model=model, weights=args.weights, config=config, detector=_optional_detector())
    except (OSError, ValueError) as e:
        print(f"jaxface reconstruct: set-up failed: {e}", file=sys.stderr)
        return 2
    print(f"model: {model.label}; method: {recon.method}", file=sys.stderr)

    images = list_images(args.paths)
    stems = [outputs.sanitize_stem(p.stem) for p in images]
    todo = [i for i, s in enumerate(stems) if args.overwrite or not outputs.outputs_exist(args.out, s)]
    skipped = len(images) - len(todo)
    failures = outputs.FailureLog()
    done = 0
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start : start + args.batch_size]
        result = recon([images[i] for i in chunk])
        for k, i in enumerate(chunk):
            if result.status[k] != "ok":
                failures.add(images[i], "reconstruct", result.status[k])
                continue
            try:
                save_outputs(result, k, args.out, stems[i], model.tris)
                done += 1
            except OSError as e:
                failures.add(images[i], "write", e)
        n = min(start + args.batch_size, len(todo))
        print(f"[{n}/{len(todo)}] {done} reconstructed, {len(failures)} failed", file=sys.stderr)
    failures.write(args.out / "failures.csv")
    print(f"{done} reconstructed, {skipped} skipped (outputs exist), {len(failures)} failed "
          f"-> {args.out}" + (f" (see {args.out / 'failures.csv'})" if len(failures) else ""))
    return 0 if done or skipped else 1


class _LazyDetector:
    """Loads the dlib detector on the first photo without a NAME.txt (2-3 s saved otherwise)."""

    def __init__(self):
        self._detector = None

    def detect(self, image):
        if self._detector is None:
            from jaxface.detect import Detector

            self._detector = Detector()
        return self._detector.detect(image)


def _optional_detector():
    """A face detector when the [detect] extra is installed, else None (photos then need NAME.txt)."""
    import importlib.util

    return _LazyDetector() if importlib.util.find_spec("dlib") is not None else None


# name -> (one-line help, "module:function" taking argv and returning an exit code)
COMMANDS = {
    "demo": ("reconstruct synthetic faces on the embedded synthetic model and write outputs (no download)", "jaxface.demo:demo_cli"),
    "reconstruct": ("reconstruct faces in photos or folders; writes .mat, .obj and overlay images", "jaxface.cli:_reconstruct"),
    "convert-bfm": ("convert the Basel Face Model files into BFM_model_front.mat", "jaxface.cli:_convert_bfm"),
    "convert-weights": ("convert trained R-Net weights (epoch_20.pth or FaceReconModel.pb) for jaxface", "jaxface.rnet.convert:convert_weights_cli"),
    "train": ("train R-Net: weakly supervised on photos (needs the Basel model) or --synthetic pre-training", "jaxface.train.cli:train_cli"),
    "detect": ("write 5-point landmark .txt files for photos (needs the [detect] extra)", "jaxface.detect:detect_cli"),
    "video": ("reconstruct a video clip: one identity, smooth per-frame motion; coeffs.npz, overlay.mp4", "jaxface.video.cli:video_cli"),
}


def _resolve(target: str):
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:<{width}}  {help_}" for name, (help_, _) in COMMANDS.items())
        print(f"usage: jaxface COMMAND [options]   (jaxface COMMAND --help for each)\n\ncommands:\n{lines}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\njaxface: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    try:
        return int(_resolve(COMMANDS[argv[0]][1])(argv[1:]) or 0)
    except (FileNotFoundError, ValueError, PermissionError, ImportError) as e:
        print(f"jaxface {argv[0]}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
