"""Convert the trained R-Net weights users bring into a jaxface weights folder.

- PyTorch `epoch_20.pth` (Deep3DFaceRecon_pytorch): `{"net_recon": state_dict}` with
  torchvision ResNet-50 keys under `backbone.` and the heads under `final_layers.0..6`.
  Read with `torch.load(weights_only=True)` (no arbitrary unpickling). Needs `jaxface[torch]`.
- TensorFlow frozen graph `FaceReconModel.pb` (Deep3DFaceReconstruction): see `convert_tf`.

Every tensor's name and shape is checked against the R-Net tree before it is converted.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.fileio import checked_file
from jaxface.rnet.checkpoint import default_rnet_dir, save_rnet
from jaxface.rnet.network import FEATURES, HEAD_WIDTHS, STAGES, RNetConfig, abstract_variables

MAX_FILE_BYTES = 4 << 30  # the real files are ~100-400 MB; refuse anything absurd before reading
TORCH_HEADS = tuple(f"final_layers.{h}" for h in range(len(HEAD_WIDTHS)))
TF_HEADS = ("fc-id", "fc-ex", "fc-tex", "fc-angles", "fc-gamma", "fc-XY", "fc-Z")
_BN_TORCH = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BN_SLIM = {"gamma": ("params", "scale"), "beta": ("params", "bias"),
            "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var")}

# source name -> (collection, module path + leaf, axis permutation from the source layout)
NameTable = dict[str, tuple[str, tuple[str, ...], tuple[int, ...] | None]]
_OIHW_TO_HWIO = (2, 3, 1, 0)


def _backbone_modules():
    """(our module path, torch module name, slim scope) of every conv and BN of the backbone."""
    yield ("conv1",), "backbone.conv1", "resnet_v1_50/conv1/weights", "conv"
    yield ("bn1",), "backbone.bn1", "resnet_v1_50/conv1/BatchNorm", "bn"
    for i, (_, n) in enumerate(STAGES):
        for j in range(n):
            mod = f"layer{i + 1}_{j}"
            torch_unit = f"backbone.layer{i + 1}.{j}"
            slim_unit = f"resnet_v1_50/block{i + 1}/unit_{j + 1}/bottleneck_v1"
            for k in (1, 2, 3):
                yield (mod, f"conv{k}"), f"{torch_unit}.conv{k}", f"{slim_unit}/conv{k}/weights", "conv"
                yield (mod, f"bn{k}"), f"{torch_unit}.bn{k}", f"{slim_unit}/conv{k}/BatchNorm", "bn"
            if j == 0:  # projection shortcut
                yield (mod, "downsample_conv"), f"{torch_unit}.downsample.0", f"{slim_unit}/shortcut/weights", "conv"
                yield (mod, "downsample_bn"), f"{torch_unit}.downsample.1", f"{slim_unit}/shortcut/BatchNorm", "bn"


def torch_name_table() -> NameTable:
    table: NameTable = {}
    for path, torch_name, _, kind in _backbone_modules():
        if kind == "conv":
            table[f"{torch_name}.weight"] = ("params", (*path, "kernel"), _OIHW_TO_HWIO)
        else:
            for t, (coll, leaf) in _BN_TORCH.items():
                table[f"{torch_name}.{t}"] = (coll, (*path, leaf), None)
    return table


def slim_name_table() -> NameTable:
    table: NameTable = {}
    for path, _, slim_name, kind in _backbone_modules():
        if kind == "conv":
            table[slim_name] = ("params", (*path, "kernel"), None)  # TF kernels are already HWIO
        else:
            for t, (coll, leaf) in _BN_SLIM.items():
                table[f"{slim_name}/{t}"] = (coll, (*path, leaf), None)
    return table


# ----------------------------------------------------------------------------- assembly

def _expected_shapes(config: RNetConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(abstract_variables(config))[0]
    return {tuple(k.key for k in kp): tuple(a.shape) for kp, a in flat}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def assemble_variables(
    shapes: Mapping[str, tuple[int, ...]],
    load: Callable[[str], np.ndarray],
    table: NameTable,
    heads: tuple[tuple[str, str], ...],
    head_layout: str,
    config: RNetConfig,
    what: str,
) -> dict:
    """Build R-Net variables from named source tensors.

    shapes: every available source tensor name -> shape (read without loading the data).
    load: name -> array, called only after the shape was checked.
    heads: (kernel name, bias name) of the seven heads, in concatenation order.
    head_layout: "OIHW" (torch, [width, 2048, 1, 1]) or "HWIO" (TF, [1, 1, 2048, width]).
    """
    expected = _expected_shapes(config)
    head_names = [n for pair in heads for n in pair]
    missing = [n for n in list(table) + head_names if n not in shapes]
    if missing:
        raise ValueError(
            f"{what}: {len(missing)} of the expected R-Net tensors are missing, e.g. {missing[:4]}; "
            "is this the trained R-Net (ResNet-50 + seven heads) of the reference implementation?")
    variables: dict = {}
    for name, (coll, path, perm) in table.items():
        want, src = expected[(coll, *path)], tuple(shapes[name])
        if (tuple(src[p] for p in perm) if perm and len(src) == len(perm) else src) != want:
            raise ValueError(f"{what}: tensor {name!r} has shape {src}, "
                             f"which does not fit R-Net's {'/'.join(path)} {want}")
        a = load(name)
        _set(variables, (coll, *path), jnp.asarray(np.transpose(a, perm) if perm else a, jnp.float32))
    kernels, biases = [], []
    for (kname, bname), width in zip(heads, HEAD_WIDTHS):
        want = (width, FEATURES, 1, 1) if head_layout == "OIHW" else (1, 1, FEATURES, width)
        if tuple(shapes[kname]) != want or tuple(shapes[bname]) != (width,):
            raise ValueError(f"{what}: head {kname!r} has shape {tuple(shapes[kname])} and bias "
                             f"{tuple(shapes[bname])}; expected {want} and ({width},)")
        w = load(kname)
        kernels.append(w.reshape(width, FEATURES).T if head_layout == "OIHW" else w.reshape(FEATURES, width))
        biases.append(load(bname).reshape(width))
    _set(variables, ("params", "head", "kernel"),
         jnp.asarray(np.concatenate(kernels, axis=1)[None, None], jnp.float32))
    _set(variables, ("params", "head", "bias"), jnp.asarray(np.concatenate(biases), jnp.float32))
    return variables


# ----------------------------------------------------------------------------- PyTorch

def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("converting a PyTorch epoch_20.pth needs PyTorch: pip install 'jaxface[torch]'") from e
    return torch


def check_source_file(path: Path, expected: str) -> Path:
    return checked_file(path, expected, MAX_FILE_BYTES, typical=f"{expected} is 100-400 MB (re-download it)",
                        missing="download it from the reference implementation's README (see weights/README.md), "
                                "then run `jaxface convert-weights PATH`")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torch_file(path: Path, expected: str):
    """torch.load with weights_only=True (memory-mapped when the format allows): tensors and
    plain containers only; anything else is a ValueError naming `expected`, never unpickled."""
    torch = _import_torch()

    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(mmap=False)  # legacy (pre-zip) files cannot be memory-mapped
    except Exception as e:  # pickle.UnpicklingError for non-tensor objects, zip/EOF errors for junk
        # torch's own message goes on to suggest weights_only=False; only its first sentence is kept.
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
        raise ValueError(
            f"{path} could not be read as a PyTorch weights file with weights_only=True "
            f"({type(e).__name__}: {first}); expected {expected} "
            "(a dict of tensors; jaxface never unpickles arbitrary objects)") from e


def read_torch_state(pth_path: str | Path) -> Mapping[str, Any]:
    """The R-Net state dict of an `epoch_20.pth` (torch tensors, memory-mapped when possible)."""
    torch = _import_torch()
    path = check_source_file(pth_path, "epoch_20.pth")
    obj = load_torch_file(path, "epoch_20.pth of Deep3DFaceRecon_pytorch")
    if isinstance(obj, Mapping) and "net_recon" in obj:
        obj = obj["net_recon"]
    elif not (isinstance(obj, Mapping) and any(str(k).startswith("backbone.") for k in obj)):
        keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} has no 'net_recon' entry (found {keys}); expected epoch_20.pth of "
                         "Deep3DFaceRecon_pytorch, whose 'net_recon' holds the R-Net state dict")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: 'net_recon' is not a state dict of tensors")
    return obj


def torch_state_to_variables(state: Mapping[str, Any], what: str = "state dict") -> tuple[dict, RNetConfig]:
    """R-Net variables + config from a Deep3DFaceRecon_pytorch `net_recon` state dict
    (values: torch tensors or numpy arrays)."""
    config = RNetConfig.for_variant("torch")
    table = torch_name_table()
    heads = tuple((f"{h}.weight", f"{h}.bias") for h in TORCH_HEADS)
    known = set(table) | {n for pair in heads for n in pair}
    unexpected = [k for k in state if k not in known and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise ValueError(f"{what}: unexpected tensors {unexpected[:4]} (total {len(unexpected)}); "
                         "this is not the reference R-Net (resnet50 + final_layers)")

    def load(name):
        v = state[name]
        return (v.detach().float().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32))

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    variables = assemble_variables(shapes, load, table, heads, "OIHW", config, what)
    return variables, config


def convert_torch(pth_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """`epoch_20.pth` -> weights folder (default weights/rnet/); returns the folder."""
    path = check_source_file(pth_path, "epoch_20.pth")
    variables, config = torch_state_to_variables(read_torch_state(path), what=str(path))
    source = {"format": "pytorch", "file": path.name, "sha256": file_sha256(path),
              "reference": "sicxu/Deep3DFaceRecon_pytorch"}
    return save_rnet(variables, config, out_dir, source)


# ----------------------------------------------------------------------------- CLI

def convert_weights_cli(argv: list[str] | None = None) -> int:
    """`jaxface convert-weights SOURCE [--out DIR] [--format auto|torch|tf]`; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="jaxface convert-weights",
        description="Convert trained R-Net weights (PyTorch epoch_20.pth or TensorFlow FaceReconModel.pb) "
                    "into a jaxface weights folder that `jaxface.rnet.load_rnet` reads.")
    parser.add_argument("source", type=Path, help="epoch_20.pth (Deep3DFaceRecon_pytorch) or "
                        "FaceReconModel.pb (Deep3DFaceReconstruction)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {default_rnet_dir()}; set JAXFACE_WEIGHTS_DIR to move it)")
    parser.add_argument("--format", choices=("auto", "torch", "tf"), default="auto",
                        help="source format; auto: by extension (.pth/.pt torch, .pb tf)")
    args = parser.parse_args(argv)
    fmt = args.format
    if fmt == "auto":
        fmt = {".pth": "torch", ".pt": "torch", ".pb": "tf"}.get(args.source.suffix.lower())
        if fmt is None:
            print(f"error: cannot tell the format of {args.source} from its extension; "
                  "pass --format torch (epoch_20.pth) or --format tf (FaceReconModel.pb)", file=sys.stderr)
            return 2
    from jaxface.rnet.convert_tf import convert_tf

    try:
        out = (convert_torch if fmt == "torch" else convert_tf)(args.source, args.out)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (variant {'torch' if fmt == 'torch' else 'slim'}); load it with jaxface.rnet.load_rnet()")
    return 0
