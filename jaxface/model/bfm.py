"""Loaders for the Basel Face Model files users bring, and the front-model conversion.

Follows SPEC "Building the front face model": the converted arrays are bit-for-bit
what the PyTorch reference's `transferBFM09` computes, cached as `BFM_model_front.mat`
in its key layout (meanshape, meantex, idBase, exBase, texBase, tri, point_buf,
tri_mask2, keypoints, frontmask2_idx, skinmask), so files move freely between the two.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import scipy.io as sio

from jaxface import paths
from jaxface.errors import MissingFileError, ModelFileError
from jaxface.fileio import atomic_path
from jaxface.model.face_model import FaceModel

BFM09_VERTICES = 53490
EXP_VERTICES = 53215
FRONT_VERTICES = 35709
NUM_ID, NUM_EXP, NUM_TEX = 80, 64, 80
# Marker variable our synthetic files carry; reference code ignores unknown keys.
SYNTHETIC_KEY = "jaxface_synthetic"

_WHERE_BFM = (
    "Request the Basel Face Model 2009 at https://faces.dmi.unibas.ch/bfm/main.php?nav=1-1-0&id=details "
    "and put 01_MorphableModel.mat in {dir}; get Exp_Pca.bin (expression basis of Guo et al.) from "
    "the CoarseData link of github.com/Juyong/3DFace and put it beside it. Without them jaxface "
    "runs on its built-in synthetic model (jaxface.synthetic_face_model)."
)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}. " + _WHERE_BFM.format(dir=path.parent))
    return path


def mat_declared_size(path: Path) -> int | None:
    """The size a MATLAB v5 file's own element headers add up to (None: not a v5 file).

    Each top-level element starts with (type, byte count); following them costs no reading
    of the data. A file shorter than this was cut off (interrupted download or copy).
    """
    import struct

    with open(path, "rb") as f:
        head = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(head[126:128]) if len(head) == 128 else None
        if order is None or not head.startswith(b"MATLAB 5.0"):
            return None
        size, pos = os.fstat(f.fileno()).st_size, 128
        while pos < size:
            f.seek(pos)
            tag = f.read(8)
            if len(tag) < 8:
                return pos + 8
            kind, nbytes = struct.unpack(order + "II", tag)
            if kind >> 16:  # small data element: the data sits in the tag
                pos += 8
            else:
                pos += 8 + nbytes + ((-nbytes) % 8 if kind == 14 else 0)  # miMATRIX is padded to 8 bytes
        return pos


def _truncation(path: Path) -> str | None:
    """Why `path` looks truncated, or None."""
    try:
        declared, size = mat_declared_size(path), path.stat().st_size
    except OSError:
        return None
    if declared is None or declared <= size:
        return None
    return (f"{path} looks truncated: it is {size:,} bytes but its contents need at least {declared:,} "
            "(an interrupted download or copy?); re-download it.")


def _loadmat_checked(path: Path, expected: dict[str, tuple]) -> dict[str, np.ndarray]:
    """loadmat after checking variable names and shapes from the header (no big allocation first).

    `expected` maps a variable to its shape; `None` in a shape means any size >= 1 there.
    """
    try:
        header = {name: tuple(shape) for name, shape, _ in sio.whosmat(str(path))}
    except Exception as e:  # scipy raises several types on garbage
        raise ModelFileError(_truncation(path) or f"{path} is not a readable MATLAB v5 .mat file "
                             f"({type(e).__name__}: {e}); re-download it.") from e
    for name, shape in expected.items():
        if name not in header:
            raise ModelFileError(_truncation(path) or f"{path} has no variable {name!r} (found {sorted(header)}); "
                                 "is this the right file?")
        found = header[name]
        if len(found) != len(shape) or any(s is not None and s != f for s, f in zip(shape, found)):
            raise ModelFileError(f"{path}: variable {name!r} has shape {found}, expected {shape} (None = any)")
    try:
        data = sio.loadmat(str(path), variable_names=list(expected) + [SYNTHETIC_KEY])
    except Exception as e:
        raise ModelFileError(_truncation(path) or f"{path} is corrupt ({type(e).__name__}: {e}); "
                             "re-download or re-convert it.") from e
    return data


def read_morphable_model(path) -> dict[str, np.ndarray]:
    """Read BFM09 `01_MorphableModel.mat`: shapeMU/PC/EV, texMU/PC/EV (xyz interleaved, micrometres / 0-255)."""
    path = _require(Path(path), "01_MorphableModel.mat (Basel Face Model 2009)")
    n3 = 3 * BFM09_VERTICES
    data = _loadmat_checked(
        path,
        {
            "shapeMU": (n3, 1),
            "shapePC": (n3, None),
            "shapeEV": (None, 1),
            "texMU": (n3, 1),
            "texPC": (n3, None),
            "texEV": (None, 1),
        },
    )
    for base, ev, need in (("shapePC", "shapeEV", NUM_ID), ("texPC", "texEV", NUM_TEX)):
        k = data[base].shape[1]
        if k < need or data[ev].shape[0] != k:
            raise ModelFileError(f"{path}: {base} has {k} components and {ev} {data[ev].shape[0]}; need equal counts >= {need}")
    return data


def read_exp_pca(path, n_vertices: int = EXP_VERTICES) -> np.ndarray:
    """Read `Exp_Pca.bin` -> expPC f32[3 * n_vertices, n] (the file's mean is skipped, as in the references).

    Layout: int32 n, then 3*n_vertices float32 (mean), then n * 3*n_vertices float32.
    """
    path = _require(Path(path), "Exp_Pca.bin (expression basis)")
    size = path.stat().st_size
    if size < 4:
        raise ModelFileError(f"{path} is {size} bytes; too short to be Exp_Pca.bin")
    with open(path, "rb") as f:
        n = int(np.frombuffer(f.read(4), dtype="<i4")[0])
        expected = 4 + 4 * 3 * n_vertices * (1 + n)
        if n < NUM_EXP or size != expected:
            raise ModelFileError(
                f"{path}: header says {n} expression components over {n_vertices} vertices, i.e. "
                f"{expected} bytes, but the file has {size} bytes (need >= {NUM_EXP} components); re-download it."
            )
        f.seek(4 + 4 * 3 * n_vertices)
        pcs = np.fromfile(f, dtype="<f4", count=n * 3 * n_vertices)
    return pcs.reshape(n, -1).T


def _read_index_files(folder: Path) -> dict[str, np.ndarray]:
    front = sio.loadmat(str(paths.index_file("BFM_front_idx.mat", folder)))["idx"]
    trim = sio.loadmat(str(paths.index_file("BFM_exp_idx.mat", folder)))["trimIndex"]
    info = sio.loadmat(str(paths.index_file("facemodel_info.mat", folder)))
    std_exp = np.loadtxt(str(paths.index_file("std_exp.txt", folder)))
    return {"idx": front, "trimIndex": trim, "info": info, "std_exp": std_exp}


def convert_bfm09(bfm_dir=None, out_path=None) -> dict[str, np.ndarray]:
    """Build the 35,709-vertex front model from 01_MorphableModel.mat + Exp_Pca.bin.

    Same operations, order and dtypes as the PyTorch reference (`transferBFM09`), so the
    arrays are bit-identical. Writes `BFM_model_front.mat` atomically to `out_path`
    (default `bfm_dir/BFM_model_front.mat`) and returns its variables.
    """
    folder = Path(bfm_dir) if bfm_dir is not None else paths.bfm_dir()
    bfm = read_morphable_model(folder / "01_MorphableModel.mat")
    exp_pc = read_exp_pca(folder / "Exp_Pca.bin")
    idx = _read_index_files(folder)

    k_id, k_exp = bfm["shapeEV"].shape[0], exp_pc.shape[1]
    id_base = (bfm["shapePC"] * np.reshape(bfm["shapeEV"], [-1, k_id]) / 1e5)[:, :NUM_ID]
    ex_base = (exp_pc * np.reshape(idx["std_exp"][:k_exp], [-1, k_exp]) / 1e5)[:, :NUM_EXP]
    tex_base = (bfm["texPC"] * np.reshape(bfm["texEV"], [-1, bfm["texEV"].shape[0]]))[:, :NUM_TEX]

    index_exp = idx["idx"].astype(np.int32).ravel() - 1  # into the 53,215-vertex expression mesh
    index_shape = (idx["trimIndex"].astype(np.int32).ravel() - 1)[index_exp]  # into the 53,490 BFM09 vertices

    def select(a, index):
        k = a.shape[-1]
        return a.reshape(-1, 3, k)[index].reshape(-1, k)

    info = idx["info"]
    out = {
        "meanshape": (bfm["shapeMU"].reshape(-1, 3) / 1e5)[index_shape].reshape(1, -1),
        "meantex": bfm["texMU"].reshape(-1, 3)[index_shape].reshape(1, -1),
        "idBase": select(id_base, index_shape),
        "exBase": select(ex_base, index_exp),
        "texBase": select(tex_base, index_shape),
        "tri": info["tri"],
        "point_buf": info["point_buf"],
        "tri_mask2": info["tri_mask2"],
        "keypoints": info["keypoints"],
        "frontmask2_idx": info["frontmask2_idx"],
        "skinmask": info["skinmask"],
    }
    if SYNTHETIC_KEY in bfm:
        out[SYNTHETIC_KEY] = bfm[SYNTHETIC_KEY]
    out_path = Path(out_path) if out_path is not None else folder / "BFM_model_front.mat"
    with atomic_path(out_path) as tmp:
        sio.savemat(str(tmp), out)
    return out


_FRONT_KEYS = {
    "meanshape": (1, 3 * FRONT_VERTICES),
    "meantex": (1, 3 * FRONT_VERTICES),
    "idBase": (3 * FRONT_VERTICES, None),
    "exBase": (3 * FRONT_VERTICES, None),
    "texBase": (3 * FRONT_VERTICES, None),
    "tri": (None, 3),
    "point_buf": (FRONT_VERTICES, None),
    "tri_mask2": (None, 3),
    "keypoints": (1, 68),
    "frontmask2_idx": (None, 1),
    "skinmask": (1, FRONT_VERTICES),
}


def load_front_model(path, name: str | None = None) -> FaceModel:
    """Load a `BFM_model_front.mat` (ours or the PyTorch reference's) as a `FaceModel`.

    As the PyTorch `ParametricFaceModel`: arrays to float32, mean shape recentred on its
    centroid, one-based indices made zero-based.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"BFM_model_front.mat not found: {path}. Build it with `jaxface convert-bfm --bfm {path.parent}` "
            "from 01_MorphableModel.mat + Exp_Pca.bin. " + _WHERE_BFM.format(dir=path.parent)
        )
    m = _loadmat_checked(path, _FRONT_KEYS)
    for key, need in (("idBase", NUM_ID), ("exBase", NUM_EXP), ("texBase", NUM_TEX)):
        if m[key].shape[1] < need:
            raise ModelFileError(f"{path}: {key} has {m[key].shape[1]} columns, expected {need}")
    v = FRONT_VERTICES
    n_tri = m["tri"].shape[0]
    mean_shape = m["meanshape"].astype(np.float32).reshape(-1, 3)
    mean_shape = mean_shape - np.mean(mean_shape, axis=0, keepdims=True)

    def basis(key, k):
        return m[key][:, :k].astype(np.float32).reshape(v, 3, k)

    def index(key, bound):
        a = m[key].astype(np.int64) - 1
        if a.size and (a.min() < 0 or a.max() > bound):
            raise ModelFileError(f"{path}: {key} has indices outside 1..{bound + 1}")
        return a.astype(np.int32)

    synthetic = SYNTHETIC_KEY in m
    return FaceModel(
        mean_shape=jnp.asarray(mean_shape),
        id_base=jnp.asarray(basis("idBase", NUM_ID)),
        exp_base=jnp.asarray(basis("exBase", NUM_EXP)),
        mean_tex=jnp.asarray(m["meantex"].astype(np.float32).reshape(v, 3)),
        tex_base=jnp.asarray(basis("texBase", NUM_TEX)),
        tris=jnp.asarray(index("tri", v - 1)),
        point_buf=jnp.asarray(index("point_buf", n_tri)),  # n_tri = the zero-normal pad
        keypoints=jnp.asarray(index("keypoints", v - 1).ravel()),
        front_mask_idx=jnp.asarray(index("frontmask2_idx", v - 1).ravel()),
        skin_mask=jnp.asarray(m["skinmask"].astype(np.float32).ravel()),
        name=name or ("synthetic" if synthetic else "BFM09"),
        synthetic=synthetic,
    )


def load_face_model(bfm_dir=None) -> FaceModel:
    """The user's Basel model from `bfm_dir` (default: `paths.bfm_dir()`).

    Uses `BFM_model_front.mat` when present, else converts 01_MorphableModel.mat +
    Exp_Pca.bin once and caches the result there.
    """
    folder = Path(bfm_dir) if bfm_dir is not None else paths.bfm_dir()
    front = folder / "BFM_model_front.mat"
    if not front.is_file():
        missing = [n for n in ("01_MorphableModel.mat", "Exp_Pca.bin") if not (folder / n).is_file()]
        if missing:
            raise MissingFileError(
                f"No Basel Face Model in {folder}: missing {', '.join(missing)} (and no converted "
                "BFM_model_front.mat). " + _WHERE_BFM.format(dir=folder)
            )
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write the converted model BFM_model_front.mat into {folder}; make it writable")
        convert_bfm09(folder, front)
    return load_front_model(front)


def bfm_available(bfm_dir=None) -> bool:
    """True when `bfm_dir` holds a converted front model or both raw files."""
    folder = Path(bfm_dir) if bfm_dir is not None else paths.bfm_dir()
    return (folder / "BFM_model_front.mat").is_file() or all(
        (folder / n).is_file() for n in ("01_MorphableModel.mat", "Exp_Pca.bin")
    )
