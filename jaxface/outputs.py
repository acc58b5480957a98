"""Per-image result files: `.mat` (both reference layouts), `.obj`, overlay `.png`, `failures.csv`.

Every writer goes through `jaxface.fileio.atomic_path` (temp file beside the destination,
renamed on success), so an interrupted run never leaves a half-written result, and an older
result survives a failed rewrite. File names come from `result_paths` / `output_path`, which
keep every path inside the output folder; `sanitize_stem` turns an image's file name into a
safe stem.

Conventions of the files (checked against both references):
- `.mat`, TensorFlow keys (Deep3DFaceReconstruction demo.py): `cropped_img` u8[224, 224, 3]
  RGB, `recon_img` f32[224, 224, 3|4] 0-255, `coeff` f32[1, 257], `face_shape` f32[V, 3]
  decimetres, `face_texture` / `face_color` f32[V, 3] 0-255 (colour not clipped),
  `lm_68p` f32[68, 2] and `lm_5p` f32[5, 2] in crop pixels with y pointing DOWN (223 - v).
- `.mat`, PyTorch keys (Deep3DFaceRecon_pytorch `save_coeff`): `id` f32[1, 80], `exp`
  f32[1, 64], `tex` f32[1, 80], `angle` f32[1, 3], `gamma` f32[1, 27], `trans` f32[1, 3],
  `lm68` f32[1, 68, 2] (crop pixels, y down: the same values as `lm_68p`).
- `.obj`: `v x y z r g b` (colour 0-1) then `f a b c` one-based.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np

from jaxface.coeffs import LAYOUT, NUM_COEFFS, Coeffs
from jaxface.conventions import CROP_SIZE, five_from_68
from jaxface.fileio import atomic_path

OK = "ok"  # the status of a photo that was reconstructed
MAX_MAT_BYTES = 256 << 20   # a result .mat is about 1.5 MB
MAX_MAT_ELEMENTS = 1 << 24  # per key; the largest (recon_img, per-vertex arrays) hold about 200,000
MAX_OBJ_BYTES = 1 << 30     # a 35,709-vertex .obj is about 4 MB
MAX_STEM_CHARS = 200        # leaves room for suffixes under the usual 255-byte name limit

TF_KEYS = ("cropped_img", "recon_img", "coeff", "face_shape", "face_texture", "face_color", "lm_68p", "lm_5p")
TORCH_KEYS = tuple(name for name, _ in LAYOUT) + ("lm68",)
RESULT_KINDS = ("mat", "obj", "overlay")


class OutputPathError(ValueError):
    """A result name would escape the output folder or is not a usable file name."""


class OutputWriteError(OSError):
    """The output folder cannot be written (read-only, missing permission, disk full)."""


# ----------------------------------------------------------------------------- paths

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
    """Where the results of one image go: `STEM.mat`, `STEM.obj`, `STEM_overlay.png`."""

    mat: Path
    obj: Path
    overlay: Path

    def of(self, kind: str) -> Path:
        if kind not in RESULT_KINDS:
            raise ValueError(f"unknown result kind {kind!r}; expected one of {RESULT_KINDS}")
        return getattr(self, kind)


def result_paths(out_dir: str | os.PathLike, stem: str) -> ResultPaths:
    """The result files of `stem` (already sanitized; see `sanitize_stem`) inside `out_dir`."""
    return ResultPaths(
        mat=output_path(out_dir, f"{stem}.mat"),
        obj=output_path(out_dir, f"{stem}.obj"),
        overlay=output_path(out_dir, f"{stem}_overlay.png"),
    )


def outputs_exist(out_dir: str | os.PathLike, stem: str, kinds: tuple[str, ...] = RESULT_KINDS) -> bool:
    """True when every result of `kinds` for `stem` exists and is non-empty (a resumable run skips it).

    Writes are atomic, so an existing file is a complete one.
    """
    paths = result_paths(out_dir, stem)
    return all(paths.of(k).is_file() and paths.of(k).stat().st_size > 0 for k in kinds)


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


# ----------------------------------------------------------------------------- array checks

def _array(name: str, a, shape: tuple, dtype=np.float32, finite: bool = True) -> np.ndarray:
    """`a` as `dtype` with `shape` (None = any size); a clear error otherwise."""
    a = np.asarray(a)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {a.shape}; expected {want}")
    if finite and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a.astype(dtype, copy=False)


def _image_255(name: str, img) -> np.ndarray:
    """u8 (0-255) or float (0-1) image -> f32 0-255, like the TF reference's `recon_img`."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[:2] != (CROP_SIZE, CROP_SIZE) or img.shape[2] not in (3, 4):
        raise ValueError(f"{name} has shape {img.shape}; expected [{CROP_SIZE}, {CROP_SIZE}, 3] (or 4 with alpha)")
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    img = _array(name, img, img.shape)
    if img.min() < -1e-3 or img.max() > 1 + 1e-3:
        raise ValueError(f"{name} is a float image with values in [{img.min():.3g}, {img.max():.3g}]; "
                         "float images must be 0-1 (pass uint8 for 0-255)")
    return np.clip(img, 0, 1) * np.float32(255)


# ----------------------------------------------------------------------------- .mat

def save_mat(
    path: str | os.PathLike,
    *,
    coeffs: Coeffs,
    cropped_img: np.ndarray,
    recon_img: np.ndarray,
    face_shape: np.ndarray,
    face_texture: np.ndarray,
    face_color: np.ndarray,
    lm_68p: np.ndarray,
    lm_5p: np.ndarray,
) -> Path:
    """Write one face's results in BOTH reference `.mat` layouts (one file, atomically).

    coeffs: Coeffs | f32[257]   one face: fields f32[w] or f32[1, w]
    cropped_img: u8[224, 224, 3]   the aligned RGB network input
    recon_img: u8 | f32[224, 224, 3 | 4]   the rendering; float means 0-1. Stored f32 0-255
                             (the TF reference stores RGBA 0-255; pass the mask as a 4th channel to match)
    face_shape: f32[V, 3]    decimetres. The TF reference stores the posed shape (rotation and
                             translation applied, before the camera); pass that to match it.
    face_texture: f32[V, 3]  albedo 0-1 (jaxface's convention); stored x255 (TF: 0-255)
    face_color: f32[V, 3]    shaded colour 0-1; stored x255, not clipped (as TF)
    lm_68p: f32[68, 2]       projected landmarks in crop pixels, y DOWN (row = 223 - v of the camera);
                             also stored as PyTorch's `lm68` f32[1, 68, 2] (same values, same convention)
    lm_5p: f32[5, 2]         the five detections in crop pixels, y down (TF's `lm_new`)

    Every value is stored as float32 (images: u8 crop, f32 render), so `load_mat` returns the
    inputs exactly (texture / colour / float renders: the x255 products).
    """
    vec = np.asarray(coeffs.to_vector() if isinstance(coeffs, Coeffs) else coeffs, np.float32).reshape(-1, NUM_COEFFS)
    if vec.shape[0] != 1:
        raise ValueError(f"save_mat writes one face; got coefficients for {vec.shape[0]} (write one file per face)")
    if not np.isfinite(vec).all():
        raise ValueError("coefficients contain NaN or infinite values")
    crop = np.asarray(cropped_img)
    if crop.dtype != np.uint8 or crop.shape != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"cropped_img is {crop.dtype}{list(crop.shape)}; expected uint8[224, 224, 3] RGB")
    shape = _array("face_shape", face_shape, (None, 3))
    n = shape.shape[0]
    lm68 = _array("lm_68p", lm_68p, (68, 2))
    data = {
        "cropped_img": crop,
        "recon_img": _image_255("recon_img", recon_img),
        "coeff": vec,
        "face_shape": shape,
        "face_texture": _array("face_texture", face_texture, (n, 3)) * np.float32(255),
        "face_color": _array("face_color", face_color, (n, 3)) * np.float32(255),
        "lm_68p": lm68,
        "lm_5p": _array("lm_5p", lm_5p, (5, 2)),
        "lm68": lm68[None],
    }
    data.update(_split(vec))
    from scipy.io import savemat

    path = Path(path)
    with atomic_output(path) as tmp:
        savemat(tmp, data)
    return path


def _split(vec: np.ndarray) -> dict[str, np.ndarray]:
    """f32[1, 257] -> the PyTorch keys, each f32[1, w]."""
    c = Coeffs.from_vector(vec)
    return {name: np.asarray(getattr(c, name), np.float32) for name, _ in LAYOUT}


# Expected shapes of every known key (None: any size, V must agree across the per-vertex keys).
_MAT_SHAPES = {
    "cropped_img": (CROP_SIZE, CROP_SIZE, 3),
    "recon_img": (CROP_SIZE, CROP_SIZE, None),
    "coeff": (1, None),
    "face_shape": (None, 3),
    "face_texture": (None, 3),
    "face_color": (None, 3),
    "lm_68p": (68, 2),
    "lm_5p": (5, 2),
    "lm68": (1, 68, 2),
    **{name: (1, w) for name, w in LAYOUT},
}


def _readable_file(path, what: str, max_bytes: int, typical: str) -> Path:
    """`path` as a Path after checking it exists and is not absurdly large (checked before reading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path} is {size >> 20} MB; {typical}, refusing files over {max_bytes >> 20} MB")
    return path


def load_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a result `.mat` in either reference layout (or both, as `save_mat` writes).

    Returns the known keys present (see the module docstring for shapes and units), always
    including `coeff` f32[1, 257]: built from the PyTorch keys when the file has only those;
    the 258th value of one TF release is dropped. Raises ValueError naming the file when a
    key has the wrong shape, values are not finite, or the two layouts disagree.
    """
    from scipy.io import loadmat, whosmat
    from scipy.io.matlab import MatReadError

    path = _readable_file(path, "result file", MAX_MAT_BYTES, "a result .mat is a few MB")
    try:
        # Headers first (cheap, even for compressed variables): refuse huge arrays before
        # allocating them, and read only the keys we know. MAT v5 holds plain arrays; nothing is unpickled.
        headers = {name: shape for name, shape, _ in whosmat(path) if name in _MAT_SHAPES}
        for name, shape in headers.items():
            if math.prod(shape) > MAX_MAT_ELEMENTS:
                raise ValueError(f"{path}: key {name!r} has shape {shape}, too large for a result file")
        raw = loadmat(path, variable_names=list(headers)) if headers else {}
    except (MatReadError, NotImplementedError, OSError) as e:
        raise ValueError(f"{path} is not a readable MATLAB v5 .mat file ({e}); save it with scipy.io.savemat") from e
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path} is not a readable MATLAB v5 .mat file ({e}); save it with scipy.io.savemat") from e
    out = {k: raw[k] for k in _MAT_SHAPES if k in raw}
    for key, a in out.items():
        want = _MAT_SHAPES[key]
        if not np.issubdtype(a.dtype, np.number) or a.ndim != len(want) or \
                any(w is not None and w != d for w, d in zip(want, a.shape)):
            raise ValueError(f"{path}: key {key!r} is {a.dtype}{list(a.shape)}; expected shape "
                             f"{['N' if w is None else w for w in want]}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ValueError(f"{path}: key {key!r} contains NaN or infinite values")
    sizes = {out[k].shape[0] for k in ("face_shape", "face_texture", "face_color") if k in out}
    if len(sizes) > 1:
        raise ValueError(f"{path}: face_shape, face_texture and face_color have different vertex counts {sorted(sizes)}")
    if "recon_img" in out and out["recon_img"].shape[2] not in (3, 4):
        raise ValueError(f"{path}: recon_img has {out['recon_img'].shape[2]} channels; expected 3 or 4")

    torch_coeffs = [name for name, _ in LAYOUT if name in out]
    if "coeff" in out:
        if out["coeff"].shape[1] < NUM_COEFFS:
            raise ValueError(f"{path}: coeff has {out['coeff'].shape[1]} values; expected {NUM_COEFFS}")
        out["coeff"] = out["coeff"][:, :NUM_COEFFS].astype(np.float32)
        for name, part in _split(out["coeff"]).items():
            if name in out and not np.array_equal(out[name].astype(np.float32), part):
                raise ValueError(f"{path}: PyTorch key {name!r} disagrees with the TF key 'coeff'")
    elif len(torch_coeffs) == len(LAYOUT):
        out["coeff"] = np.concatenate([out[name] for name, _ in LAYOUT], axis=1).astype(np.float32)
    else:
        missing = [name for name, _ in LAYOUT if name not in out]
        raise ValueError(f"{path} holds no coefficients: no 'coeff' (TF layout) and PyTorch keys {missing} missing")
    if "lm68" in out and "lm_68p" in out and not np.array_equal(out["lm68"][0], out["lm_68p"]):
        raise ValueError(f"{path}: 'lm68' and 'lm_68p' hold different landmarks")
    return out


# ----------------------------------------------------------------------------- .obj

# %.9g round-trips float32 exactly (9 significant digits), so load_obj returns what was written.
_V_FMT = "v %.9g %.9g %.9g %.9g %.9g %.9g\n"
_F_FMT = "f %d %d %d\n"


def format_obj(vertices: np.ndarray, colors: np.ndarray, tris: np.ndarray) -> bytes:
    """The `.obj` text of a vertex-coloured triangle mesh (see `save_obj`)."""
    v = _array("vertices", vertices, (None, 3))
    n = v.shape[0]
    c = np.clip(_array("colors", colors, (n, 3)), 0, 1)
    t = np.asarray(tris)
    if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tris is {t.dtype}{list(t.shape)}; expected integer [T, 3]")
    if t.size and (t.min() < 0 or t.max() >= n):
        raise ValueError(f"tris index vertices {t.min()}..{t.max()}; expected zero-based indices below {n}")
    # One %-format over the whole array: no Python-level loop per line.
    vals = np.concatenate([v, c], axis=1).astype(np.float64).ravel().tolist()
    text = (_V_FMT * n) % tuple(vals) + (_F_FMT * len(t)) % tuple((t.astype(np.int64) + 1).ravel().tolist())
    return text.encode("ascii")


def save_obj(path: str | os.PathLike, vertices: np.ndarray, colors: np.ndarray, tris: np.ndarray) -> Path:
    """Write a vertex-coloured mesh as `.obj`, atomically.

    vertices: f32[V, 3]   decimetres. Both references pass the posed shape (rotation and
                          translation applied; TF's comment says "canonical view" but it writes
                          `face_shape_t`, PyTorch undoes only the camera's z flip)
    colors: f32[V, 3]     0-1, clipped (the references clip too)
    tris: i32[T, 3]       zero-based; written one-based (`f a b c`)
    """
    data = format_obj(vertices, colors, tris)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read a triangle mesh `.obj` -> (vertices f32[V, 3], colors f32[V, 3] | None, tris i32[T, 3] zero-based).

    Understands `v x y z [r g b]` and `f a b c` with optional `/vt/vn` parts; ignores other
    records (vn, vt, comments, groups). Colours are returned as written (None if no vertex
    has them). Polygons with more than three corners and relative (negative) indices are refused.
    """
    path = _readable_file(path, "mesh", MAX_OBJ_BYTES, "a face mesh .obj is a few MB")
    lines = path.read_bytes().splitlines()
    vals = _records(path, b"v", [ln[2:] for ln in lines if ln[:2] in (b"v ", b"v\t")], (3, 6), np.float64)
    faces = re.sub(rb"/\S*", b"", b"\n".join(ln[2:] for ln in lines if ln[:2] in (b"f ", b"f\t")))  # drop /vt/vn
    tris = _records(path, b"f", faces.splitlines(), (3,), np.int64) - 1
    if not np.isfinite(vals).all():
        raise ValueError(f"{path}: vertex values contain NaN or infinite numbers")
    n = len(vals)
    if tris.size and (tris.min() < 0 or tris.max() >= n):
        raise ValueError(f"{path}: face indices must be one-based and at most the vertex count {n} "
                         f"(found {tris.min() + 1}..{tris.max() + 1}); relative (negative) indices are not supported")
    vals = vals.astype(np.float32)
    colors = vals[:, 3:6] if vals.shape[1] == 6 else None
    return vals[:, :3], colors, tris.astype(np.int32)


def _records(path: Path, tag: bytes, lines: list[bytes], widths: tuple[int, ...], dtype) -> np.ndarray:
    """The values of `tag` lines (tag already stripped) as dtype[N, width], parsed by numpy's C reader."""
    if not lines:
        return np.zeros((0, widths[0]), dtype)
    try:
        table = np.loadtxt(io.BytesIO(b"\n".join(lines)), dtype=dtype, ndmin=2, comments=None)
    except ValueError as e:  # a changing column count or a token that is not a number
        table, err = None, e
    if table is None or table.shape[1] not in widths:
        detail = f" ({err})" if table is None else ""
        raise ValueError(f"{path}: every '{tag.decode()}' line must hold {' or '.join(map(str, widths))} numbers"
                         + ("; only triangle meshes are read" if tag == b"f" else "") + detail)
    return table


# ----------------------------------------------------------------------------- overlay

def blend_overlay(image: np.ndarray, rendering: np.ndarray, mask: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """u8[H, W, 3]: photo * (1 - w) + 255 * rendering * w, with w = alpha * clip(mask, 0, 1), rounded.

    alpha = 1 is the PyTorch reference's visualisation (rendering replaces the covered pixels).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"overlay image is {img.dtype}{list(img.shape)}; expected uint8[H, W, 3] RGB")
    h, w = img.shape[:2]
    ren = _array("rendering", rendering, (h, w, 3))
    m = _array("mask", mask, (h, w))
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is {alpha}; expected 0-1")
    wgt = (np.float32(alpha) * np.clip(m, 0, 1))[..., None]
    out = img.astype(np.float32) * (1 - wgt) + np.clip(ren, 0, 1) * np.float32(255) * wgt
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, color=(255, 0, 0), radius: int | None = None) -> np.ndarray:
    """A copy of u8[H, W, 3] with filled dots at landmarks f32[N, 2] (pixel x right, y down).

    Sub-pixel centres (cv2 fixed-point shift); the radius defaults to about 1/300 of the
    larger side (at least 1 px). Dots outside the image are clipped away.
    """
    import cv2

    pts = _array("landmarks", landmarks, (None, 2), np.float64)
    h, w = image.shape[:2]
    r = max(1, round(max(h, w) / 300)) if radius is None else int(radius)
    out = np.ascontiguousarray(image).copy()
    shift = 4
    for x, y in np.rint(pts * (1 << shift)).astype(np.int64):
        if abs(x) < 1 << 30 and abs(y) < 1 << 30:  # cv2 takes 32-bit coordinates
            cv2.circle(out, (int(x), int(y)), r << shift, tuple(int(c) for c in color), -1, cv2.LINE_AA, shift)
    return out


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    rendering: np.ndarray,
    mask: np.ndarray,
    landmarks: np.ndarray | None = None,
    alpha: float = 1.0,
) -> Path:
    """Write the rendering blended over the photo (`blend_overlay`) with landmark dots, as PNG.

    image: u8[H, W, 3] RGB   rendering: f32[H, W, 3] 0-1   mask: f32[H, W] 0-1
    landmarks: f32[N, 2] | None   pixel coordinates, x right, y down
    """
    out = blend_overlay(image, rendering, mask, alpha)
    if landmarks is not None:
        out = draw_landmarks(out, landmarks)
    return save_png(path, out)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write u8[H, W, 3] RGB as a PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))  # cv2 encodes BGR
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as PNG")
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


# ----------------------------------------------------------------------------- failures.csv

FAILURE_COLUMNS = ("image", "stage", "message")


@dataclass(frozen=True)
class Failure:
    """One image that produced no result: which file, at which stage, and why."""

    image: str
    stage: str
    message: str


def write_failures_csv(path: str | os.PathLike, rows) -> Path:
    """Write `failures.csv` (header image,stage,message; one row per Failure) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for r in rows:
        writer.writerow([str(r.image), r.stage, " ".join(str(r.message).split())])  # one line per row
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def read_failures_csv(path: str | os.PathLike) -> list[Failure]:
    """The rows of a `failures.csv` written by `write_failures_csv`."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != FAILURE_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(FAILURE_COLUMNS)}")
        return [Failure(*row) for row in reader if len(row) == 3]


@dataclass
class FailureLog:
    """Failures of a batch run, collected as they happen; `write` rewrites the csv atomically."""

    rows: list[Failure] = field(default_factory=list)

    def add(self, image: str | os.PathLike, stage: str, error: BaseException | str) -> Failure:
        msg = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        row = Failure(str(image), stage, msg)
        self.rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | os.PathLike) -> Path:
        return write_failures_csv(path, self.rows)


def save_outputs(recon, i: int, out_dir, stem: str, tris) -> None:
    """Write image i of a `jaxface.Reconstruction`: `STEM.mat` (both reference layouts),
    `STEM.obj`, `STEM_overlay.png`.

    As both references do, the mesh and `face_shape` are the posed shape; landmarks in the
    .mat are crop pixels (y down); the overlay is in original-image pixels with landmarks.
    """
    if recon.status[i] != OK:
        raise ValueError(f"image {i} has no result ({recon.status[i]})")
    where = result_paths(out_dir, sanitize_stem(stem))
    lm68 = recon.crop_landmarks[i]
    save_mat(
        where.mat,
        coeffs=Coeffs(*(np.asarray(x[i]) for x in recon.coeffs)),
        cropped_img=recon.crops[i],
        recon_img=recon.rendered[i],
        face_shape=recon.vertices[i],
        face_texture=recon.albedo[i],
        face_color=recon.colors[i],
        lm_68p=lm68,
        lm_5p=five_from_68(lm68),
    )
    save_obj(where.obj, recon.vertices[i], recon.colors[i], np.asarray(tris))
    save_png(where.overlay, draw_landmarks(recon.overlays[i], recon.landmarks[i]))
