"""A deterministic synthetic morphable model on the real BFM front topology.

The Basel Face Model cannot be shipped, so jaxface generates a stand-in, from a seed,
in exactly the users' file formats (a BFM09-style `01_MorphableModel.mat` with 199
identity/albedo components over 53,490 vertices, an `Exp_Pca.bin` with 79 expression
components over 53,215 vertices, and copies of the MIT index files), then converts it
with the same code path as the real model. Every file carries the marker variable
`jaxface_synthetic`, and the loaded `FaceModel` has `synthetic=True`.

Geometry (SPEC "A synthetic model on the real topology"): a Tutte embedding of the
front mesh with its boundary on an ellipse; a smoothed thin-plate-spline warp of that
layout through the 68 template landmarks (x, y); depth from a quadratic fitted to the
landmarks plus smooth Gaussian bumps near their z (nose, brows, lips). Albedo: skin tone
with smooth variation, darker brows and eyes and redder lips along the landmark contours.
Bases are smooth random Fourier fields at realistic scales.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import scipy.io as sio
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from jaxface import paths
from jaxface.fileio import atomic_path
from jaxface.model import bfm
from jaxface.model.face_model import FaceModel
from jaxface.model.uv import boundary_loops

VERSION = 5  # bump when the generator changes: the cache key includes it
_MM = 0.01  # one millimetre in model units (decimetres)


def tutte_layout(tris: np.ndarray, n: int, aspect: float = 1.3) -> np.ndarray:
    """Tutte embedding f64[n, 2] of a disk-like mesh: its longest boundary loop on an ellipse
    (x radius 1, y radius `aspect`) by arc length, interior = mean of neighbours. Walking the
    loop along the triangles' own edge directions keeps every triangle's orientation."""
    loop = boundary_loops(tris)[0]
    i = np.concatenate([tris[:, 0], tris[:, 1], tris[:, 2], tris[:, 1], tris[:, 2], tris[:, 0]])
    j = np.concatenate([tris[:, 1], tris[:, 2], tris[:, 0], tris[:, 0], tris[:, 1], tris[:, 2]])
    adj = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicate edges -> weight 1
    lap = sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj
    # Boundary angles from the loop's own (topological) arc length.
    theta = 2 * np.pi * np.arange(len(loop)) / len(loop)
    fixed = np.zeros((n, 2))
    fixed[loop] = np.stack([np.cos(theta), aspect * np.sin(theta)], axis=1)
    is_b = np.zeros(n, bool)
    is_b[loop] = True
    inner = np.flatnonzero(~is_b)
    # Unused vertices (none on the BFM front mesh) would make the system singular.
    lii = lap[inner][:, inner].tocsc()
    rhs = -lap[inner][:, loop] @ fixed[loop]
    solve = spla.factorized(lii)
    fixed[inner] = np.stack([solve(rhs[:, 0]), solve(rhs[:, 1])], axis=1)
    return fixed


def _tps_fit(src: np.ndarray, dst: np.ndarray, smoothing: float = 0.0):
    """Thin-plate spline R^2 -> R^k near the control points (exact when smoothing = 0); returns a callable."""
    def kernel(a, b):
        r2 = np.sum((a[:, None] - b[None]) ** 2, axis=-1)
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-300)) * 0.5, 0.0)

    n = len(src)
    p = np.concatenate([np.ones((n, 1)), src], axis=1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = kernel(src, src) + smoothing * np.eye(n)
    a[:n, n:] = p
    a[n:, :n] = p.T
    b = np.zeros((n + 3, dst.shape[1]))
    b[:n] = dst
    w = np.linalg.solve(a, b)

    def apply(x):
        out = np.concatenate([np.ones((len(x), 1)), x], axis=1) @ w[n:]
        for s in range(0, len(x), 8192):  # chunked kernel to bound memory
            out[s : s + 8192] += kernel(x[s : s + 8192], src) @ w[:n]
        return out

    return apply


def _mean_geometry(tris: np.ndarray, keypoints: np.ndarray, lm3d: np.ndarray, n: int) -> np.ndarray:
    """Face-like positions f64[n, 3] passing through the template landmarks at the keypoints."""
    uv = tutte_layout(tris, n)
    # The Tutte layout may come out mirrored relative to the landmark layout; fix by the sign
    # of the least-squares affine map between them (a mirrored TPS would fold everywhere).
    a, *_ = np.linalg.lstsq(np.c_[uv[keypoints], np.ones(68)], lm3d[:, :2], rcond=None)
    if np.linalg.det(a[:2]) < 0:
        uv[:, 0] *= -1
    # Exact interpolation folds the mesh where inner and outer lip landmarks crowd together;
    # a little smoothing leaves 2 of 70,789 triangles flipped with landmarks within ~3 mm.
    xy = _tps_fit(uv[keypoints], lm3d[:, :2], smoothing=0.03)(uv)
    # Depth: a quadratic bowl through the landmarks' overall curvature, plus wide Gaussian bumps
    # fitted (ridge-regularized, so shading stays smooth) to the residual: nose, brows, lips.
    q = np.c_[np.ones(68), lm3d[:, :2], lm3d[:, :2] ** 2, lm3d[:, 0] * lm3d[:, 1]]
    cq, *_ = np.linalg.lstsq(q, lm3d[:, 2], rcond=None)

    def quad(p):
        return np.c_[np.ones(len(p)), p, p**2, p[:, 0] * p[:, 1]] @ cq

    sigma = 0.2
    def rbf(a, b):
        return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * sigma**2))

    resid = lm3d[:, 2] - quad(lm3d[:, :2])
    w = np.linalg.solve(rbf(lm3d[:, :2], lm3d[:, :2]) + 0.05 * np.eye(68), resid)
    z = quad(xy) + rbf(xy, lm3d[:, :2]) @ w
    return np.c_[xy, z]


def _fourier_features(rng, pos: np.ndarray, length: float, n_features: int = 128) -> np.ndarray:
    """Random Fourier features f32[n, n_features] of positions f64[n, 3] at one length scale."""
    w = rng.normal(size=(3, n_features)) / length
    phase = rng.uniform(0, 2 * np.pi, size=n_features)
    return np.cos(pos @ w + phase).astype(np.float32) * np.float32(np.sqrt(2.0 / n_features))


def _smooth_fields(rng, pos: np.ndarray, k: int, lengths, n_features: int = 128) -> np.ndarray:
    """k smooth random fields f32[n, k]: random mixtures of Fourier features, mixing coarse scales
    into the first fields and finer ones into later fields (as PCA components go)."""
    lengths = np.atleast_1d(lengths)
    feats = np.concatenate([_fourier_features(rng, pos, s, n_features) for s in lengths], axis=1)
    # Field c weights scale s by a bump around its position in the coarse-to-fine order.
    order = np.linspace(0, 1, k)[:, None]
    scale_pos = np.linspace(0, 1, len(lengths))[None]
    mix = np.exp(-((order - scale_pos) ** 2) / 0.1) if len(lengths) > 1 else np.ones((k, 1))
    w = rng.normal(size=(feats.shape[1], k)).astype(np.float32)
    w *= np.repeat(mix.T, n_features, axis=0).astype(np.float32)
    return feats @ w


def _unit_columns(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def _contours(lm3d, groups) -> np.ndarray:
    """Points f64[N, 2] densely along landmark polylines: groups of (first, last, closed), one-based."""
    pts = []
    for first, last, closed in groups:
        ring = lm3d[first - 1 : last, :2]
        ends = np.roll(ring, -1, axis=0) if closed else ring[1:]
        for t in np.linspace(0, 1, 8, endpoint=False):
            pts.append(ring[: len(ends)] * (1 - t) + ends * t)
    pts.append(lm3d[[g[1] - 1 for g in groups], :2])
    return np.concatenate(pts)


BROWS = ((18, 22, False), (23, 27, False))
EYES = ((37, 42, True), (43, 48, True))
LIPS = ((49, 60, True), (61, 68, True))


def _landmark_window(pos, lm3d, groups, radius):
    """Weight in [0, 1]: 1 on the landmark contours of `groups`, fading with distance."""
    pts = _contours(lm3d, groups)
    d = np.min(np.linalg.norm(pos[:, None, :2] - pts[None], axis=-1), axis=1)
    return np.exp(-((d / radius) ** 2))


def generate_files(out_dir, seed: int = 0) -> Path:
    """Write the synthetic 01_MorphableModel.mat, Exp_Pca.bin and index files into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in paths.INDEX_FILES + ("LICENSE",):
        shutil.copyfile(paths.index_file(name), out_dir / name)
    info = sio.loadmat(str(paths.index_file("facemodel_info.mat")))
    tris = info["tri"].astype(np.int64) - 1
    keypoints = info["keypoints"].astype(np.int64).ravel() - 1
    lm3d = sio.loadmat(str(paths.index_file("similarity_Lm3D_all.mat")))["lm"].astype(np.float64)
    front = sio.loadmat(str(paths.index_file("BFM_front_idx.mat")))["idx"].astype(np.int64).ravel() - 1
    trim = sio.loadmat(str(paths.index_file("BFM_exp_idx.mat")))["trimIndex"].astype(np.int64).ravel() - 1
    shape_idx = trim[front]  # front vertex -> BFM09 vertex
    nf = bfm.FRONT_VERTICES

    pos = _mean_geometry(tris, keypoints, lm3d, nf)  # decimetres, front vertices
    marker = np.array(f"jaxface synthetic morphable model v{VERSION}, seed {seed}; NOT the Basel Face Model")

    # Identity: 199 smooth fields per axis, unit-norm columns over the full vertex set, with
    # eigenvalues so that one sigma of the first component moves vertices ~2 mm (RMS).
    n_id = 199
    id_fields = np.zeros((bfm.BFM09_VERTICES, 3, n_id), np.float32)
    id_fields[shape_idx] = _smooth_fields(rng, pos, 3 * n_id, (1.0, 0.7, 0.5, 0.35)).reshape(nf, 3, n_id)
    shape_pc = _unit_columns(id_fields.reshape(-1, n_id))  # rows: (v, xyz)
    rms_mm = 2.0 * np.exp(-np.arange(n_id) / 15.0)
    shape_ev = rms_mm * _MM * 1e5 * np.sqrt(3 * nf)  # micrometres; x column norm 1 -> per-vertex RMS

    # Albedo: skin tone with smooth variation, darker brows/eyes and redder lips.
    base = np.array([205.0, 150.0, 125.0])
    tex = np.tile(base, (nf, 1)) + 12.0 * _smooth_fields(rng, pos, 3, 0.4)
    tex -= 90 * _landmark_window(pos, lm3d, BROWS, 0.03)[:, None] * np.array([1.0, 1.1, 1.1])
    tex -= 80 * _landmark_window(pos, lm3d, EYES, 0.025)[:, None]
    tex += _landmark_window(pos, lm3d, LIPS, 0.03)[:, None] * np.array([-10.0, -55.0, -40.0])
    tex_mu = np.full((bfm.BFM09_VERTICES, 3), 128.0)
    tex_mu[shape_idx] = np.clip(tex, 0, 255)
    tex_fields = np.zeros((bfm.BFM09_VERTICES, 3, n_id), np.float32)
    raw = _smooth_fields(rng, pos, 3 * n_id, (0.5, 0.3, 0.15)).reshape(nf, 3, n_id)
    # Albedo varies mostly in brightness (channels move together), a little in hue.
    tex_fields[shape_idx] = raw[:, :1] * np.array([1.0, 0.85, 0.75], np.float32)[:, None] + 0.3 * raw
    tex_pc = _unit_columns(tex_fields.reshape(-1, n_id))
    tex_ev = 8.0 * np.exp(-np.arange(n_id) / 15.0) * np.sqrt(3 * nf)  # 0-255 units, per-vertex RMS

    shape_mu = np.zeros((bfm.BFM09_VERTICES, 3))
    # An off-centre mean (as in BFM09) so the loaders' recentring is exercised.
    shape_mu[shape_idx] = pos + np.array([0.05, 0.2, -0.1])
    sio_vars = {
        "shapeMU": (shape_mu * 1e5).reshape(-1, 1).astype(np.float32),
        "shapePC": shape_pc.astype(np.float32),
        "shapeEV": shape_ev.reshape(-1, 1).astype(np.float32),
        "texMU": tex_mu.reshape(-1, 1).astype(np.float32),
        "texPC": tex_pc.astype(np.float32),
        "texEV": tex_ev.reshape(-1, 1).astype(np.float32),
        "tl": np.zeros((0, 3), np.float64),  # BFM09's own triangle list is not used by the front model
        bfm.SYNTHETIC_KEY: marker,
    }
    with atomic_path(out_dir / "01_MorphableModel.mat") as tmp:
        sio.savemat(str(tmp), sio_vars)

    # Expression: 79 fields localized on mouth/jaw, eyes and brows; unit columns so that the
    # shipped std_exp scales them to millimetres (one unit of the first moves vertices ~1 mm RMS, a few mm at the mouth).
    n_exp = 79
    exp_pos = np.zeros((bfm.EXP_VERTICES, 3))
    exp_pos[front] = pos
    mouth = _landmark_window(pos, lm3d, LIPS + ((8, 10, False),), 0.35)
    eyes = _landmark_window(pos, lm3d, BROWS + EYES, 0.2)
    window = np.zeros(bfm.EXP_VERTICES)
    window[front] = np.maximum(mouth, 0.5 * eyes)
    std_exp = np.loadtxt(str(paths.index_file("std_exp.txt")))
    exp_fields = np.zeros((bfm.EXP_VERTICES, 3, n_exp), np.float32)
    exp_fields[front] = _smooth_fields(rng, pos, 3 * n_exp, (0.5, 0.35, 0.25)).reshape(nf, 3, n_exp)
    exp_fields *= window[:, None, None].astype(np.float32)
    exp_pc = _unit_columns(exp_fields.reshape(-1, n_exp))
    exp_pc *= (1.0 * _MM * 1e5 * np.sqrt(3 * nf) / std_exp[0]) * np.exp(-np.arange(n_exp) / 20.0) * std_exp[0] / std_exp
    exp_mu = exp_pos.reshape(-1) * 1e5
    with atomic_path(out_dir / "Exp_Pca.bin") as tmp:
        with open(tmp, "wb") as f:
            np.array([n_exp], "<i4").tofile(f)
            exp_mu.astype("<f4").tofile(f)
            exp_pc.T.astype("<f4").tofile(f)
    (out_dir / "SYNTHETIC_MODEL.txt").write_text(str(marker) + "\n")
    return out_dir


def synthetic_model_dir(seed: int = 0, cache_dir=None) -> Path:
    """Folder holding the generated files for `seed`, generated and converted on first use."""
    root = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    key = hashlib.sha1(f"v{VERSION}-seed{seed}".encode()).hexdigest()[:8]
    folder = root / f"synthetic-bfm-v{VERSION}-seed{seed}-{key}"
    if not (folder / "BFM_model_front.mat").is_file():
        generate_files(folder, seed)
        bfm.convert_bfm09(folder)
    return folder


def synthetic_face_model(seed: int = 0, cache_dir=None) -> FaceModel:
    """The embedded synthetic `FaceModel` (labelled synthetic), generated once per seed and cached."""
    return bfm.load_front_model(synthetic_model_dir(seed, cache_dir) / "BFM_model_front.mat", name=f"synthetic-seed{seed}")
