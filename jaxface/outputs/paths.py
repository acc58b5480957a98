"""Where results go: safe stems, paths kept inside the output folder, atomic writes."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from jaxface.fileio import atomic_path

OK = "ok"  # the status of a photo that was reconstructed
MAX_STEM_CHARS = 200        # leaves room for suffixes under the usual 255-byte name limit
RESULT_KINDS = ("mat", "obj", "overlay")
TEXTURE_KINDS = ("texture", "albedo", "visibility", "mtl", "glb")  # with --texture
# Names earlier jaxface releases wrote, still accepted as done when resuming.
LEGACY_NAMES = {"obj": "{stem}.obj"}


class OutputPathError(ValueError):
    """A result name would escape the output folder or is not a usable file name."""


class OutputWriteError(OSError):
    """The output folder cannot be written (read-only, missing permission, disk full)."""


_UNSAFE = re.compile(r"[^\w.\-]+")


def sanitize_stem(stem: str) -> str:
    """A file-name stem made safe to join onto the output folder.

    Runs of characters other than letters, digits, `_`, `.`, `-` become `_`; leading dots
    (hidden files, `..`) are dropped; the result is cut to 200 characters. Distinct stems can
    map to the same result (`a b` and `a_b`); callers that care should check for collisions.
    """
    safe = _UNSAFE.sub("_", stem).lstrip(".")[:MAX_STEM_CHARS]
    if not safe.strip("_"):
        raise OutputPathError(f"image name {stem!r} leaves no usable characters for a result file name; "
                              "rename the image")
    return safe


def output_path(out_dir: str | os.PathLike, name: str) -> Path:
    """`out_dir / name`, refusing names that could leave `out_dir` (separators, `..`, absolute, NUL)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or PureWindowsPath(name).drive:
        raise OutputPathError(
            f"result file name {name!r} is not a plain file name (path separators, '..' or NUL are refused "
            "so that results stay inside the output folder); pass a name made by sanitize_stem")
    return Path(out_dir) / name


@dataclass(frozen=True)
class ResultPaths:
    """Where the results of one image go, named as the TF reference's demo.py names them:
    `STEM.mat`, `STEM_mesh.obj`, and `STEM_overlay.png`; with textures `STEM_texture.png`,
    `STEM_albedo.png`, `STEM_visibility.png`, `STEM_mesh.mtl` and `STEM.glb`."""

    mat: Path
    obj: Path
    overlay: Path
    texture: Path
    albedo: Path
    visibility: Path
    mtl: Path
    glb: Path

    def of(self, kind: str) -> Path:
        if kind not in RESULT_KINDS + TEXTURE_KINDS:
            raise ValueError(f"unknown result kind {kind!r}; expected one of {RESULT_KINDS + TEXTURE_KINDS}")
        return getattr(self, kind)


def result_paths(out_dir: str | os.PathLike, stem: str) -> ResultPaths:
    """The result files of `stem` (already sanitized; see `sanitize_stem`) inside `out_dir`."""
    names = {"mat": "{}.mat", "obj": "{}_mesh.obj", "overlay": "{}_overlay.png", "texture": "{}_texture.png",
             "albedo": "{}_albedo.png", "visibility": "{}_visibility.png", "mtl": "{}_mesh.mtl", "glb": "{}.glb"}
    return ResultPaths(**{kind: output_path(out_dir, name.format(stem)) for kind, name in names.items()})


def outputs_exist(out_dir: str | os.PathLike, stem: str, kinds: tuple[str, ...] = RESULT_KINDS) -> bool:
    """True when every result of `kinds` for `stem` exists and is non-empty (a resumable run skips it);
    a file under its `LEGACY_NAMES` name counts too.

    Writes are atomic, so an existing file is a complete one.
    """
    paths = result_paths(out_dir, stem)

    def done(kind):
        names = [paths.of(kind)]
        if kind in LEGACY_NAMES:
            names.append(output_path(out_dir, LEGACY_NAMES[kind].format(stem=stem)))
        return any(p.is_file() and p.stat().st_size > 0 for p in names)

    return all(done(k) for k in kinds)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """`jaxface.fileio.atomic_path`, with OS errors (read-only folder, disk full) turned into
    an OutputWriteError that names the file, the folder and the fix."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        msg = (f"cannot write {path}: {e.strerror or e}. Check that the output folder "
               f"{path.parent} is a writable folder with free space, or choose another output folder")
        raise OutputWriteError(*((e.errno, msg) if e.errno else (msg,))) from e
