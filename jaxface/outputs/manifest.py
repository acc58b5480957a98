"""`manifest.csv`: which photo each result name belongs to, so no photo overwrites another's.

Photo names are sanitized into result stems (`sanitize_stem`), and distinct photos can map
to one stem: `a b.jpg` and `a_b.jpg`, `x.jpg` and `x.png`, the same name in two input
folders. `assign_stems` gives every photo its own stem, compared case-insensitively (the
results must also be distinct on macOS and Windows): a photo keeps the stem the manifest
recorded for it in an earlier run; otherwise it gets its sanitized name when free, photos
whose name needed no sanitizing first, and else the first free `NAME_2`, `NAME_3`, ...
in input order. The manifest maps each photo's absolute path to its stem; it is rewritten
(atomically) before any result of a run is written, and earlier rows are kept.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from jaxface.outputs.paths import MAX_STEM_CHARS, OutputPathError, atomic_output, sanitize_stem

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("image", "stem")


def image_key(path: str | os.PathLike) -> str:
    """How the manifest names a photo: its absolute path (symlinks resolved)."""
    return str(Path(path).resolve())


def read_manifest(out_dir: str | os.PathLike) -> dict[str, str]:
    """{image key: stem} from `out_dir/manifest.csv` ({} when there is none)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} could not be read ({e}); delete it to let jaxface rebuild it") from e
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS or any(len(r) != 2 for r in rows[1:]):
        raise ValueError(f"{path} is not a jaxface manifest (header {','.join(MANIFEST_COLUMNS)}, two columns); "
                         "delete it to let jaxface rebuild it")
    seen: set[str] = set()
    for image, stem in rows[1:]:
        try:
            safe = sanitize_stem(stem) == stem
        except OutputPathError:
            safe = False
        if not safe or stem.casefold() in seen:
            raise ValueError(f"{path}: the stem {stem!r} of {image} is {'repeated' if safe else 'not a safe name'}; "
                             "delete the manifest to let jaxface rebuild it")
        seen.add(stem.casefold())
    return {image: stem for image, stem in rows[1:]}


def write_manifest(out_dir: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Write {image key: stem} as `out_dir/manifest.csv`, sorted by stem, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for image, stem in sorted(entries.items(), key=lambda kv: (kv[1].casefold(), kv[1], kv[0])):
        writer.writerow([image, stem])
    path = Path(out_dir) / MANIFEST_NAME
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _numbered(base: str, n: int) -> str:
    tail = f"_{n}"
    return base[:MAX_STEM_CHARS - len(tail)] + tail


def assign_stems(images, manifest: dict[str, str]) -> tuple[list[str | None], dict[int, str]]:
    """A distinct result stem for each photo (see the module docstring).

    images: paths (distinct files).  manifest: {image key: stem} of earlier runs.
    Returns (stems, errors): stems[i] is None where errors[i] says why the name is unusable.
    """
    keys = [image_key(p) for p in images]
    taken = {stem.casefold() for stem in manifest.values()}
    stems: list[str | None] = [manifest.get(k) for k in keys]
    errors: dict[int, str] = {}
    bases: dict[int, str] = {}
    for i, p in enumerate(images):
        if stems[i] is None:
            try:
                bases[i] = sanitize_stem(Path(p).stem)
            except OutputPathError as e:
                errors[i] = str(e)
    # Photos whose name is already a clean stem get it first, then the rest take free names.
    for i, base in bases.items():
        if base == Path(images[i]).stem and base.casefold() not in taken:
            stems[i] = base
            taken.add(base.casefold())
    for i, base in bases.items():
        if stems[i] is None:
            stem, n = base, 1
            while stem.casefold() in taken:
                n += 1
                stem = _numbered(base, n)
            stems[i] = stem
            taken.add(stem.casefold())
    return stems, errors
