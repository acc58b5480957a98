"""`jaxface convert-identity backbone.pth`: ArcFace weights users bring -> a jaxface weights folder.

Layout (default `weights/identity/`, beside the R-Net's `weights/rnet/`, same conventions):
    identity.json  {"format", "version", "config": IResNetConfig fields, "source": {...}}
    checkpoint/    orbax StandardCheckpointer tree {"params", "batch_stats"} (float32)

The input is arcface_torch's `backbone.pth` (insightface; the PyTorch Deep3DFaceRecon
reference trains with an iresnet50/100 from it), read with `torch.load(weights_only=True)`:
a state dict of tensors, nothing unpickled. Needs `jaxface[torch]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import jax

from jaxface.fileio import checked_file
from jaxface.identity.arcface import IResNetConfig, abstract_variables, torch_state_to_variables
from jaxface.paths import weights_dir
from jaxface.rnet.checkpoint import write_weights
from jaxface.rnet.convert import file_sha256, load_torch_file

META_NAME = "identity.json"
CKPT_NAME = "checkpoint"
FORMAT = "jaxface-identity"
VERSION = 1
MAX_FILE_BYTES = 2 << 30  # iresnet100 is ~250 MB


def default_identity_dir() -> Path:
    return weights_dir() / "identity"


def save_identity(variables: dict, config: IResNetConfig, out_dir: str | Path | None = None,
                  source: dict[str, Any] | None = None) -> Path:
    """Write ArcFace `variables` + `config` (+ where they came from) to `out_dir`; returns the folder."""
    meta = {"format": FORMAT, "version": VERSION, "config": config.to_json(), "source": source or {}}
    return write_weights(out_dir if out_dir is not None else default_identity_dir(), variables,
                         abstract_variables(config), meta, META_NAME, "save_identity")


def load_identity_weights(path: str | Path | None = None) -> tuple[dict, IResNetConfig, dict]:
    """(variables, config, source) from a folder written by `jaxface convert-identity`."""
    import orbax.checkpoint as ocp

    where = Path(path if path is not None else default_identity_dir()).expanduser().resolve()
    if where.is_file() and where.suffix in (".pth", ".pt"):
        raise ValueError(f"{where} is an unconverted PyTorch file; run `jaxface convert-identity {where}` first "
                         f"and pass the folder it writes ({default_identity_dir()})")
    meta_path, ckpt_path = where / META_NAME, where / CKPT_NAME
    if not meta_path.is_file() or not ckpt_path.is_dir():
        raise FileNotFoundError(
            f"no converted ArcFace weights at {where} (expected {META_NAME} and {CKPT_NAME}/). Bring arcface_torch's "
            "backbone.pth (iresnet50 or iresnet100, as the PyTorch Deep3DFaceRecon README links) and run "
            "`jaxface convert-identity backbone.pth`; or use dlib's network (--identity dlib, the [detect] extra).")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); re-run `jaxface convert-identity`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{meta_path} is not a jaxface identity-network description")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{meta_path} has version {meta['version']}; this jaxface reads up to {VERSION}")
    config = IResNetConfig.from_json(meta["config"])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_variables(config))
    try:
        variables = ocp.StandardCheckpointer().restore(ckpt_path, target)
    except Exception as e:  # orbax raises several types for truncated / mismatched trees
        raise ValueError(f"could not restore {ckpt_path} ({type(e).__name__}: {e}); re-run `jaxface convert-identity`") from e
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    return variables, config, source


def read_torch_state(pth_path: str | Path) -> Mapping[str, Any]:
    """The state dict of an arcface_torch backbone.pth (torch tensors; weights_only, memory-mapped)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("converting an ArcFace backbone.pth needs PyTorch: pip install 'jaxface[torch]'") from e
    path = checked_file(pth_path, "ArcFace weights", MAX_FILE_BYTES, typical="an iresnet50/100 backbone.pth is 170-260 MB",
                        missing="expected arcface_torch's backbone.pth")
    obj = load_torch_file(path, "arcface_torch's backbone.pth")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict of tensors; expected arcface_torch's backbone.pth")
    # Weights saved from a DataParallel / DistributedDataParallel wrapper carry a "module." prefix.
    if obj and all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    return obj


def convert_arcface(pth_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """backbone.pth -> weights folder (default weights/identity/); returns the folder."""
    path = Path(pth_path).expanduser()
    variables, config = torch_state_to_variables(read_torch_state(path), what=str(path))
    source = {"format": "pytorch", "file": path.name, "sha256": file_sha256(path), "network": config.name,
              "reference": "deepinsight/insightface recognition/arcface_torch"}
    return save_identity(variables, config, out_dir, source)


def convert_identity_cli(argv: list[str] | None = None) -> int:
    """`jaxface convert-identity backbone.pth [--out DIR]`; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="jaxface convert-identity",
        description="Convert an ArcFace backbone (arcface_torch backbone.pth, iresnet50/100) for the identity "
        "(perceptual) loss: `jaxface train --identity arcface:DIR`. Read with torch.load(weights_only=True).")
    parser.add_argument("source", type=Path, help="backbone.pth")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {default_identity_dir()})")
    args = parser.parse_args(argv)
    out = convert_arcface(args.source, args.out)
    _, config, _ = load_identity_weights(out)  # read back: what was written loads
    print(f"wrote {out} ({config.name}, {config.features}-d embeddings)", file=sys.stderr)
    return 0
