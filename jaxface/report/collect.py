"""What an output folder holds: one `Photo` per result stem or failure, and the run's record.

Results are `STEM.mat` / `STEM_mesh.obj` / `STEM_overlay.png` (see `jaxface.outputs.paths`), failures
come from `failures.csv`, and the run's record from `run.json` (written by `jaxface reconstruct`
through `record_run`) or `summary.json` (written by `jaxface demo`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from jaxface.conventions import IMAGE_SUFFIXES
from jaxface.fileio import checked_file, write_text_atomic
from jaxface.outputs import (
    OutputPathError,
    read_failures_csv,
    result_paths,
    sanitize_stem,
)

RUN_FILE = "run.json"          # written by `jaxface reconstruct`
DEMO_SUMMARY = "summary.json"  # written by `jaxface demo`
MAX_JSON_BYTES = 64 << 20      # a run record of 1,000 photos is about 200 kB
# Known fields of a run record and their types; other fields are kept but not shown.
RUN_FIELDS = {"command": str, "model": str, "method": str, "photos": int, "skipped": int,
              "seconds": (int, float, dict), "inputs": dict}


@dataclass(frozen=True)
class Photo:
    """One row of the report: a photo with results, a failure, or both (a failed redo of an
    older result). Paths are None where the file is absent; `source` is the input photo."""

    name: str
    failed: bool = False
    stage: str = ""
    message: str = ""
    mat: Path | None = None
    obj: Path | None = None
    overlay: Path | None = None
    source: Path | None = None
    extra: tuple[tuple[str, float], ...] = ()


def read_json(path: Path) -> dict:
    """A JSON object from `path` (size checked first); ValueError naming the file otherwise."""
    checked_file(path, "run record", MAX_JSON_BYTES, typical="a run record is a few kB (delete it and rerun `jaxface report`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or rerun the command that wrote it") from e
    if not isinstance(data, dict):  # ValueError like every bad file: the CLI reports those cleanly
        raise ValueError(  # noqa: TRY004
            f"{path} holds a JSON {type(data).__name__}; expected an object")
    return data


def check_run(run: dict, where: str) -> dict:
    """`run` with its known fields type-checked (ValueError naming `where` and the field)."""
    for key, kind in RUN_FIELDS.items():
        if key in run and (not isinstance(run[key], kind) or isinstance(run[key], bool)):
            raise ValueError(f"{where}: field {key!r} is {type(run[key]).__name__}; expected "
                             f"{' or '.join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))}")
    inputs = run.get("inputs", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
        raise ValueError(f"{where}: 'inputs' must map result names to photo paths (strings)")
    return run


def record_run(out_dir: Path, run: dict) -> dict:
    """Write `run` to OUT/run.json, keeping the inputs of earlier runs (a resumed run skips
    photos whose results exist, and their thumbnails still need the photo's path)."""
    run = check_run(dict(run), "run record")
    path = out_dir / RUN_FILE
    if path.is_file():
        try:
            old = check_run(read_json(path), str(path))
        except ValueError:
            old = {}  # replaced by this run's record
        run["inputs"] = {**old.get("inputs", {}), **run.get("inputs", {})}
    write_text_atomic(path, json.dumps(run, indent=1, sort_keys=True) + "\n")
    return run


def read_run(out_dir: Path) -> dict:
    """The run's record: OUT/run.json, else the demo's summary.json, else {}."""
    for name in (RUN_FILE, DEMO_SUMMARY):
        path = out_dir / name
        if path.is_file():
            run = check_run(read_json(path), str(path))
            if name == DEMO_SUMMARY:
                run.setdefault("command", "demo")
            return run
    return {}


def _failure_name(image: str) -> str:
    try:
        return sanitize_stem(Path(image).stem)
    except OutputPathError:
        return Path(image).name or image


def _demo_extra(run: dict) -> dict[str, tuple[tuple[str, float], ...]]:
    """Per-photo numbers of the demo's summary.json (errors against the true faces)."""
    extra = {}
    for item in run.get("per_image", []) if isinstance(run.get("per_image"), list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            extra[item["name"]] = tuple((k, float(v)) for k, v in item.items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool))
    return extra


def _source(out_dir: Path, name: str, inputs: dict) -> Path | None:
    """The input photo of `name`: from the run record, else OUT/inputs/NAME.* (the demo's layout)."""
    if name in inputs:
        p = Path(inputs[name])
        return p if p.is_file() else None
    for suffix in IMAGE_SUFFIXES:
        p = out_dir / "inputs" / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def scan(out_dir: Path, run: dict) -> list[Photo]:
    """One Photo per result stem (a .mat or .obj in `out_dir`) and per row of failures.csv,
    sorted by name."""
    names = {_result_stem(p) for p in out_dir.iterdir() if p.suffix in (".mat", ".obj") and p.is_file()}
    failures = {}
    if (out_dir / "failures.csv").is_file():
        for f in read_failures_csv(out_dir / "failures.csv"):
            failures[_failure_name(f.image)] = f
    inputs, extra = run.get("inputs", {}), _demo_extra(run)
    photos = []
    for name in sorted(names | set(failures), key=lambda s: (s.casefold(), s)):
        f = failures.get(name)
        files = {}
        if name in names:
            where = result_paths(out_dir, name) if _plain(name) else None
            files = {k: getattr(where, k) if where and getattr(where, k).is_file() else None
                     for k in ("mat", "obj", "overlay")}
            if where and files["obj"] is None and (out_dir / f"{name}.obj").is_file():
                files["obj"] = out_dir / f"{name}.obj"  # written before the TF original's NAME_mesh.obj
        source = _source(out_dir, name, inputs) if _plain(name) else None
        if f is not None and source is None and Path(f.image).is_file():
            source = Path(f.image)
        photos.append(Photo(name=name, failed=f is not None, stage=f.stage if f else "",
                            message=f.message if f else "", source=source, extra=extra.get(name, ()), **files))
    return photos


def _result_stem(path: Path) -> str:
    """STEM of STEM.mat, STEM_mesh.obj (the TF original's name) or an older STEM.obj."""
    stem = path.stem
    return stem[: -len("_mesh")] if path.suffix == ".obj" and stem.endswith("_mesh") else stem


def _plain(name: str) -> bool:
    """Whether `name` can be joined onto the output folder (names from failures.csv are untrusted)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") and \
        not os.path.isabs(name)
