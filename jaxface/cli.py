"""The `jaxface` command line: one subcommand per job, each with --help."""

from __future__ import annotations

import argparse
import signal
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


# name -> (one-line help, "module:function" taking argv and returning an exit code)
COMMANDS = {
    "demo": ("reconstruct synthetic faces on the embedded synthetic model and write outputs (no download)", "jaxface.demo:demo_cli"),
    "reconstruct": ("reconstruct faces in photos or folders; writes .mat, .obj and overlay images (--texture: "
                    "texture maps, textured .obj and .glb)", "jaxface.reconstruct_cli:reconstruct_cli"),
    "edit": ("edit the expression of result .mat files (--neutral, --expression-from OTHER.mat)",
             "jaxface.edit:edit_cli"),
    "report": ("(re)build OUT/index.html: a page of a run's results with a 3D viewer", "jaxface.report:report_cli"),
    "convert-bfm": ("convert the Basel Face Model files into BFM_model_front.mat", "jaxface.cli:_convert_bfm"),
    "convert-weights": ("convert trained R-Net weights (epoch_20.pth or FaceReconModel.pb) for jaxface", "jaxface.rnet.convert:convert_weights_cli"),
    "convert-identity": ("convert an ArcFace backbone.pth (iresnet50/100) for the identity loss", "jaxface.identity.convert:convert_identity_cli"),
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
    previous = _sigterm_as_interrupt()
    try:
        return int(_resolve(COMMANDS[argv[0]][1])(argv[1:]) or 0)
    except (FileNotFoundError, ValueError, PermissionError, ImportError) as e:
        print(f"jaxface {argv[0]}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jaxface {argv[0]}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """Make SIGTERM (kill, a scheduler's stop) end a command like Ctrl-C does: temp files are
    removed and the command says what was kept. Returns the previous handler (None off the
    main thread, where handlers cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
