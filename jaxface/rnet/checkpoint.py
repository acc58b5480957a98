"""Save / load converted R-Net variables: an orbax checkpoint plus a JSON of how to feed it.

Layout of a weights folder (default `weights/rnet/`, see `jaxface.paths.weights_dir`):
    rnet.json      {"format", "version", "config": RNetConfig fields, "source": {...}}
    checkpoint/    orbax StandardCheckpointer tree {"params", "batch_stats"} (float32)

"source" says where the weights came from (`weights_provenance`). Coefficients only mean
something for the face model the network was trained with: `face_model_source(model)` is
what a writer records about that model and `trained_for_synthetic(source)` what a reader
concludes from it (converted reference weights record none: the Basel model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxface.fileio import write_text_atomic
from jaxface.paths import weights_dir
from jaxface.rnet.network import INPUT_CONVENTIONS, VARIANTS, RNetConfig, abstract_variables

META_NAME = "rnet.json"
CKPT_NAME = "checkpoint"
FORMAT = "jaxface-rnet"
VERSION = 1


def default_rnet_dir() -> Path:
    return weights_dir() / "rnet"


def missing_weights_message(where: Path) -> str:
    return (
        f"no converted R-Net weights at {where} (expected {META_NAME} and {CKPT_NAME}/ there). "
        "Bring the trained weights of a reference implementation: the PyTorch `epoch_20.pth` "
        "(Deep3DFaceRecon_pytorch, checkpoints/<model name>/epoch_20.pth, from the link in its README) "
        "or the TensorFlow `FaceReconModel.pb` (Deep3DFaceReconstruction, network/FaceReconModel.pb, "
        "from the link in its README), then run `jaxface convert-weights PATH/TO/epoch_20.pth` "
        f"(or FaceReconModel.pb), which writes {default_rnet_dir()}; or point JAXFACE_WEIGHTS_DIR "
        "at a folder holding rnet/. See weights/README.md."
    )


# Written by `face_model_source`, read by `trained_for_synthetic`.
FACE_MODEL_SYNTHETIC = "face_model_synthetic"


def face_model_source(model) -> dict[str, Any]:
    """The fields of a `source` that name the face model the weights regress coefficients of."""
    return {"face_model": model.label, FACE_MODEL_SYNTHETIC: bool(model.synthetic)}


def trained_for_synthetic(source: dict[str, Any]) -> bool:
    """Whether weights with this `source` were trained for the SYNTHETIC face model."""
    if FACE_MODEL_SYNTHETIC in source:
        return source[FACE_MODEL_SYNTHETIC]
    # Runs of jaxface train before FACE_MODEL_SYNTHETIC marked synthetic data or model so.
    return source.get("synthetic", False)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_meta(meta_path: Path) -> dict[str, Any]:
    """The rnet.json of a weights folder, every field checked; a ValueError names the file and field."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); re-run `jaxface convert-weights`") from e
    fix = "re-run `jaxface convert-weights` (or `jaxface train`) to rewrite it"
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}; {fix}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}; "
                         f"this is not a jaxface R-Net description; {fix}")
    version = meta.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise ValueError(f"{meta_path}: field 'version' is {version!r}; this jaxface reads version "
                         f"{VERSION} (a newer jaxface may have written it); {fix}")
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{meta_path}: field 'config' must be an object, got {type(config).__name__}; {fix}")
    choices = {"variant": VARIANTS, "input": INPUT_CONVENTIONS, "dtype": ("float32", "bfloat16")}
    for name, allowed in choices.items():
        if name in config and config[name] not in allowed:
            raise ValueError(f"{meta_path}: field 'config.{name}' is {config[name]!r}; expected one of {allowed}")
    eps = config.get("bn_eps", 1e-5)
    if not _is_number(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{meta_path}: field 'config.bn_eps' must be a positive number, got {eps!r}")
    return meta


def weights_provenance(path: str | Path | None = None) -> dict[str, Any]:
    """The `source` of a weights folder's rnet.json ({} when it records none), type-checked."""
    meta_path = Path(path if path is not None else default_rnet_dir()) / META_NAME
    source = read_meta(meta_path).get("source", {})
    if source is None:
        return {}
    if not isinstance(source, dict):
        raise ValueError(f"{meta_path}: field 'source' must be an object, got {type(source).__name__}")
    for field in (FACE_MODEL_SYNTHETIC, "synthetic"):
        if field in source and not isinstance(source[field], bool):
            raise ValueError(f"{meta_path}: field 'source.{field}' must be true or false, "
                             f"got {source[field]!r}")
    return source


def write_weights(out: Path, variables: dict, expected: dict, meta: dict, meta_name: str, what: str) -> Path:
    """Write a weights folder: the orbax checkpoint of `variables` (checked against the
    `expected` abstract tree first) and `meta` as JSON in `meta_name`; returns the folder."""
    import orbax.checkpoint as ocp

    out = Path(out).resolve()  # orbax wants absolute paths
    got = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), variables)
    want = jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), expected)
    if got != want:
        raise ValueError(f"{what}: variables do not match the network's tree (names, shapes or float32 dtype)")
    out.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out / CKPT_NAME, variables, force=True)
    ckptr.wait_until_finished()
    write_text_atomic(out / meta_name, json.dumps(meta, indent=2) + "\n")
    return out


def save_rnet(variables: dict, config: RNetConfig, out_dir: str | Path | None = None,
              source: dict[str, Any] | None = None) -> Path:
    """Write `variables` + `config` (+ where they came from) to `out_dir`; returns the folder."""
    meta = {"format": FORMAT, "version": VERSION, "config": config.to_json(), "source": source or {}}
    return write_weights(out_dir if out_dir is not None else default_rnet_dir(), variables,
                         abstract_variables(config), meta, META_NAME, "save_rnet")


def load_rnet(path: str | Path | None = None) -> tuple[dict, RNetConfig]:
    """(variables, config) from a folder written by `save_rnet` / `jaxface convert-weights`.

    `path`: the folder (default `weights/rnet/`); raises FileNotFoundError naming the files
    to bring and the command to run when it holds no converted weights.
    """
    import orbax.checkpoint as ocp

    where = Path(path if path is not None else default_rnet_dir()).resolve()
    if where.is_file() and where.suffix in (".pth", ".pb"):
        raise ValueError(
            f"{where} is an unconverted weights file; run `jaxface convert-weights {where}` first "
            "and load the folder it writes")
    meta_path, ckpt_path = where / META_NAME, where / CKPT_NAME
    if not meta_path.is_file() or not ckpt_path.is_dir():
        raise FileNotFoundError(missing_weights_message(where))
    config = RNetConfig.from_json(read_meta(meta_path)["config"])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_variables(config))
    try:
        variables = ocp.StandardCheckpointer().restore(ckpt_path, target)
    except Exception as e:  # orbax raises several types for truncated / mismatched trees
        raise ValueError(
            f"could not restore the R-Net checkpoint in {ckpt_path} ({type(e).__name__}: {e}); "
            "re-run `jaxface convert-weights`") from e
    return variables, config
