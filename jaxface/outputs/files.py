"""Result files in the references' formats: `.mat` (both layouts), `.obj`, `.png`.

Conventions of the files (checked against both references):
- `.mat`, TensorFlow keys (Deep3DFaceReconstruction demo.py): `cropped_img` u8[224, 224, 3]
  RGB, `recon_img` f32[224, 224, 4] RGBA (RGB 0-255 clipped, alpha 0-1 = the face mask, as
  tf_mesh_renderer returns it), `coeff` f32[1, 257], `face_shape` f32[V, 3] decimetres,
  `face_texture` / `face_color` f32[V, 3] 0-255 (colour not clipped), `lm_68p` f32[68, 2]
  (the projected landmarks, `223 - v` as face_decoder.py flips them) and `lm_5p` f32[5, 2]
  (the five detections after alignment, preprocess_img.py's `lm_new`), both in crop pixels
  with y pointing DOWN.
- `.mat`, PyTorch keys (Deep3DFaceRecon_pytorch `save_coeff`): `id` f32[1, 80], `exp`
  f32[1, 64], `tex` f32[1, 80], `angle` f32[1, 3], `gamma` f32[1, 27], `trans` f32[1, 3],
  `lm68` f32[1, 68, 2] (crop pixels, y down: the same values as `lm_68p`).
- `.obj`: `v x y z r g b` (colour 0-1) then `f a b c` one-based.
"""


from __future__ import annotations

import functools
import io
import math
import os
import re
from pathlib import Path

import numpy as np

from jaxface.coeffs import LAYOUT, NUM_COEFFS, Coeffs
from jaxface.conventions import CROP_SIZE
from jaxface.fileio import checked_file
from jaxface.outputs.paths import atomic_output

MAX_MAT_BYTES = 256 << 20   # a result .mat is about 1.5 MB
MAX_MAT_ELEMENTS = 1 << 24  # per key; the largest (recon_img, per-vertex arrays) hold about 200,000
MAX_OBJ_BYTES = 1 << 30     # a 35,709-vertex .obj is about 4 MB

TF_KEYS = ("cropped_img", "recon_img", "coeff", "face_shape", "face_texture", "face_color", "lm_68p", "lm_5p")
TORCH_KEYS = tuple(name for name, _ in LAYOUT) + ("lm68",)


# ----------------------------------------------------------------------------- array checks

def check_array(name: str, a, shape: tuple, dtype=np.float32, finite: bool = True) -> np.ndarray:
    """`a` as `dtype` with `shape` (None = any size); a clear error otherwise."""
    a = np.asarray(a)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {a.shape}; expected {want}")
    if finite and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a.astype(dtype, copy=False)


def _image_255(name: str, img) -> np.ndarray:
    """u8 (0-255) or float (0-1) image -> f32 0-255, like the TF reference's `recon_img`; the
    alpha channel of a float RGBA image stays 0-1 (tf_mesh_renderer's alpha, stored so)."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[:2] != (CROP_SIZE, CROP_SIZE) or img.shape[2] not in (3, 4):
        raise ValueError(f"{name} has shape {img.shape}; expected [{CROP_SIZE}, {CROP_SIZE}, 3] (or 4 with alpha)")
    if img.dtype == np.uint8:
        return img.astype(np.float32)
    img = check_array(name, img, img.shape)
    if img.min() < -1e-3 or img.max() > 1 + 1e-3:
        raise ValueError(f"{name} is a float image with values in [{img.min():.3g}, {img.max():.3g}]; "
                         "float images must be 0-1 (pass uint8 for 0-255)")
    out = np.clip(img, 0, 1)
    out[..., :3] *= np.float32(255)
    return out


# ----------------------------------------------------------------------------- .mat

def save_mat(
    path: str | os.PathLike,
    *,
    coeffs: Coeffs,
    cropped_img: np.ndarray | None,
    recon_img: np.ndarray,
    face_shape: np.ndarray,
    face_texture: np.ndarray,
    face_color: np.ndarray,
    lm_68p: np.ndarray,
    lm_5p: np.ndarray | None,
) -> Path:
    """Write one face's results in BOTH reference `.mat` layouts (one file, atomically).

    coeffs: Coeffs | f32[257]   one face: fields f32[w] or f32[1, w]
    cropped_img: u8[224, 224, 3] | None   the aligned RGB network input (None: not stored)
    recon_img: u8 | f32[224, 224, 3 | 4]   the rendering; float means 0-1. Stored f32, RGB 0-255
                             and alpha 0-1 (the TF reference stores RGBA so; pass the mask as alpha)
    face_shape: f32[V, 3]    decimetres. The TF reference stores the posed shape (rotation and
                             translation applied, before the camera); pass that to match it.
    face_texture: f32[V, 3]  albedo 0-1 (jaxface's convention); stored x255 (TF: 0-255)
    face_color: f32[V, 3]    shaded colour 0-1; stored x255, not clipped (as TF)
    lm_68p: f32[68, 2]       projected landmarks in crop pixels, y DOWN (row = 223 - v of the camera);
                             also stored as PyTorch's `lm68` f32[1, 68, 2] (same values, same convention)
    lm_5p: f32[5, 2] | None  the five detections after alignment, crop pixels, y down (TF's `lm_new`)

    Every value is stored as float32 (images: u8 crop, f32 render), so `load_mat` returns the
    inputs exactly (texture / colour / float renders: the x255 products).
    """
    vec = np.asarray(coeffs.to_vector() if isinstance(coeffs, Coeffs) else coeffs, np.float32).reshape(-1, NUM_COEFFS)
    if vec.shape[0] != 1:
        raise ValueError(f"save_mat writes one face; got coefficients for {vec.shape[0]} (write one file per face)")
    if not np.isfinite(vec).all():
        raise ValueError("coefficients contain NaN or infinite values")
    crop = None if cropped_img is None else np.asarray(cropped_img)
    if crop is not None and (crop.dtype != np.uint8 or crop.shape != (CROP_SIZE, CROP_SIZE, 3)):
        raise ValueError(f"cropped_img is {crop.dtype}{list(crop.shape)}; expected uint8[224, 224, 3] RGB")
    shape = check_array("face_shape", face_shape, (None, 3))
    n = shape.shape[0]
    lm68 = check_array("lm_68p", lm_68p, (68, 2))
    data = {
        **({} if crop is None else {"cropped_img": crop}),
        "recon_img": _image_255("recon_img", recon_img),
        "coeff": vec,
        "face_shape": shape,
        "face_texture": check_array("face_texture", face_texture, (n, 3)) * np.float32(255),
        "face_color": check_array("face_color", face_color, (n, 3)) * np.float32(255),
        "lm_68p": lm68,
        "lm68": lm68[None],
    }
    if lm_5p is not None:
        data["lm_5p"] = check_array("lm_5p", lm_5p, (5, 2))
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


def load_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a result `.mat` in either reference layout (or both, as `save_mat` writes).

    Returns the known keys present (see the module docstring for shapes and units), always
    including `coeff` f32[1, 257]: built from the PyTorch keys when the file has only those;
    the 258th value of one TF release is dropped. Raises ValueError naming the file when a
    key has the wrong shape, values are not finite, or the two layouts disagree.
    """
    from scipy.io import loadmat, whosmat
    from scipy.io.matlab import MatReadError

    path = checked_file(path, "result file", MAX_MAT_BYTES, typical="a result .mat is a few MB")
    try:
        # Headers first (cheap, even for compressed variables): refuse huge arrays before
        # allocating them, and read only the keys we know. MAT v5 holds plain arrays; nothing is unpickled.
        headers = {name: shape for name, shape, _ in whosmat(path) if name in _MAT_SHAPES}
        for name, shape in headers.items():
            if math.prod(shape) > MAX_MAT_ELEMENTS:
                raise ValueError(f"{path}: key {name!r} has shape {shape}, too large for a result file")
        raw = loadmat(path, variable_names=list(headers)) if headers else {}
    except (MatReadError, NotImplementedError, OSError, IndexError) as e:  # IndexError: files under 128 bytes
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

_F_FMT = "f %d %d %d\n"
# "0000".."9999" as little-endian uint32 words: four digits written with one store.
_FOUR_DIGITS = np.frombuffer("".join(f"{i:04d}" for i in range(10**4)).encode(), "<u4")


def _float32_fields(x: np.ndarray) -> np.ndarray:
    """`float32_text` with a leading space, u8[N, 16]: four aligned 4-byte words per value
    (" -d.", "dddd", "dddd", "e+dd"), each written with one vectorised store."""
    x = np.asarray(x, np.float32).ravel()
    a = np.abs(x.astype(np.float64))
    nonzero = a > 0
    e = np.where(nonzero, np.floor(np.log10(np.where(nonzero, a, 1.0))), 0).astype(np.int64)
    m = np.rint(a / 10.0 ** (e - 8)).astype(np.int64)
    # log10 can land one decade off next to powers of ten; rounding can carry to 10 digits.
    low, high = nonzero & (m < 10**8), m >= 10**9
    e = e - low + high
    m = np.where(low | high, np.rint(a / 10.0 ** (e - 8)).astype(np.int64), m).astype(np.uint32)
    lead, rest = np.divmod(m, np.uint32(10**8))
    high4, low4 = np.divmod(rest, np.uint32(10**4))
    tens, ones = np.divmod(np.abs(e).astype(np.uint32), np.uint32(10))
    words = np.empty((x.size, 4), "<u4")
    sign = np.where(x < 0, np.uint32(ord("-")), np.uint32(ord(" ")))
    words[:, 0] = np.uint32(ord(" ") | ord(".") << 24) | sign << 8 | (lead + ord("0")) << 16
    words[:, 1] = _FOUR_DIGITS[high4]
    words[:, 2] = _FOUR_DIGITS[low4]
    exp_sign = np.where(e < 0, np.uint32(ord("-")), np.uint32(ord("+")))
    words[:, 3] = np.uint32(ord("e")) | exp_sign << 8 | (tens + ord("0")) << 16 | (ones + ord("0")) << 24
    return words.view(np.uint8)


def float32_text(x: np.ndarray) -> np.ndarray:
    """Finite float32 values as fixed-width text, u8[N, 15]: sign (space or '-'), nine
    significant digits in scientific notation ("-1.23456789e-01"). Nine digits round-trip
    float32 exactly (its spacing is at least 6e-8 relative, theirs at most 1e-8), so a reader
    gets back the very values written; numpy formats them, no Python loop per number."""
    return _float32_fields(x)[:, 1:]


def format_obj(vertices: np.ndarray, colors: np.ndarray, tris: np.ndarray) -> bytes:
    """The `.obj` text of a vertex-coloured triangle mesh (see `save_obj`)."""
    v = check_array("vertices", vertices, (None, 3))
    n = v.shape[0]
    c = np.clip(check_array("colors", colors, (n, 3)), 0, 1)
    t = np.asarray(tris)
    if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tris is {t.dtype}{list(t.shape)}; expected integer [T, 3]")
    if t.size and (t.min() < 0 or t.max() >= n):
        raise ValueError(f"tris index vertices {t.min()}..{t.max()}; expected zero-based indices below {n}")
    # "v" and six " <number>" fields per line, built as one byte array.
    lines = np.empty((n, 2 + 6 * 16), np.uint8)
    lines[:, 0], lines[:, -1] = ord("v"), ord("\n")
    lines[:, 1:-1] = _float32_fields(np.concatenate([v, c], axis=1)).reshape(n, 6 * 16)
    return lines.tobytes() + _face_lines(t.astype(np.int64).tobytes())


@functools.lru_cache(maxsize=4)
def _face_lines(tris: bytes) -> bytes:
    """The `f a b c` lines of int64 zero-based triangles (as bytes): every mesh of a model
    shares them, so they are formatted once."""
    t = np.frombuffer(tris, np.int64)
    return ((_F_FMT * (len(t) // 3)) % tuple((t + 1).tolist())).encode("ascii")


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
    path = checked_file(path, "mesh", MAX_OBJ_BYTES, typical="a face mesh .obj is a few MB")
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
