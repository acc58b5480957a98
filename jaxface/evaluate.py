"""Reconstruction accuracy with the published protocol (SPEC "Published accuracy").

1. Similarity alignment (rotation, translation, uniform scale) of the prediction to the
   ground truth: Umeyama on corresponding landmarks first, then ICP with scale on the
   ground-truth points against the predicted surface.
2. Only ground-truth points within 95 mm of the ground-truth nose tip count.
3. Error of a ground-truth point = its distance to the predicted SURFACE (closest point
   on the nearest triangle, not the nearest vertex), in millimetres.

Model units are decimetres (`UNITS_PER_MM` = 0.01); pass `units_per_mm` for other data
(1.0 for scans in millimetres). The prediction moves onto the ground truth, so errors are
measured at the ground truth's scale. Evaluation runs in float64 numpy/scipy: it is not
part of any differentiated or jitted path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

UNITS_PER_MM = 0.01  # model units are decimetres
CROP_RADIUS_MM = 95.0


class MeshError(NamedTuple):
    """Point-to-surface error statistics in millimetres over the evaluated ground-truth points.

    median, mean, std: float   mm
    num_points: int            ground-truth points inside the crop
    scale: float               scale of the final similarity applied to the prediction
    """

    median: float
    mean: float
    std: float
    num_points: int
    scale: float


class Similarity(NamedTuple):
    """x -> scale * x @ rot.T + trans."""

    scale: float
    rot: np.ndarray
    trans: np.ndarray

    def apply(self, x):
        return self.scale * np.asarray(x) @ self.rot.T + self.trans

    def then(self, other: "Similarity") -> "Similarity":
        """The similarity `other(self(x))`."""
        return Similarity(other.scale * self.scale, other.rot @ self.rot, other.apply(self.trans))


def umeyama(src, dst, weights=None) -> Similarity:
    """Least-squares similarity mapping src f[N, 3] onto dst f[N, 3] (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    cov = (d * w[:, None]).T @ s
    u, sig, vt = np.linalg.svd(cov)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ fix @ vt
    var = np.sum(w * np.sum(s * s, axis=1))
    scale = float(np.trace(np.diag(sig) @ fix) / var) if var > 0 else 1.0
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def closest_points_on_triangles(p, a, b, c):
    """Closest points f64[N, 3] on triangles (a, b, c) f[N, 3] to points p f[N, 3] (Ericson,
    Real-Time Collision Detection 5.1.5), vectorized; degenerate triangles fall back to edges."""
    p, a, b, c = (np.asarray(x, np.float64) for x in (p, a, b, c))
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    out = np.empty_like(p)
    done = np.zeros(len(p), bool)

    def take(cond, value):
        sel = cond & ~done
        out[sel] = value[sel] if value.ndim == 2 else value
        done[:] |= sel

    with np.errstate(divide="ignore", invalid="ignore"):
        take((d1 <= 0) & (d2 <= 0), a)
        take((d3 >= 0) & (d4 <= d3), b)
        v = d1 / (d1 - d3)
        take((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + v[:, None] * ab)
        take((d6 >= 0) & (d5 <= d6), c)
        w = d2 / (d2 - d6)
        take((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + w[:, None] * ac)
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        take((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + w[:, None] * (c - b))
        denom = va + vb + vc
        inside = np.abs(denom) > 1e-300
        v, w = vb / denom, vc / denom
        take(inside, a + v[:, None] * ab + w[:, None] * ac)
    if not done.all():  # degenerate (zero-area) triangles: nearest of the three edges
        rest = ~done
        cands = [_closest_on_segment(p[rest], x[rest], y[rest]) for x, y in ((a, b), (b, c), (c, a))]
        dist = np.stack([np.sum((q - p[rest]) ** 2, axis=1) for q in cands])
        out[rest] = np.stack(cands)[np.argmin(dist, axis=0), np.arange(rest.sum())]
    return out


def _dot(x, y):
    return np.einsum("ij,ij->i", x, y)


def _closest_on_segment(p, a, b):
    ab = b - a
    t = np.clip(_dot(p - a, ab) / np.maximum(_dot(ab, ab), 1e-300), 0.0, 1.0)
    return a + t[:, None] * ab


class SurfaceQuery:
    """Exact closest points on a triangle mesh for many query points.

    Candidates for a query p: triangles whose centroid lies within d_v + r of p, where d_v
    is the distance to the nearest mesh vertex (an upper bound on the surface distance)
    and r bounds the triangle's centroid-to-corner distance, so the nearest triangle is
    always among them. Triangles are grouped by that radius (one centroid tree per group)
    so a few large triangles do not widen every search.
    """

    def __init__(self, vertices, tris, radius_quantiles=(0.5, 0.9, 0.99)):
        self.vertices = np.asarray(vertices, np.float64)
        self.tris = np.asarray(tris, np.int64)
        corners = self.vertices[self.tris]  # [T, 3, 3]
        centroids = corners.mean(axis=1)
        radius = np.max(np.linalg.norm(corners - centroids[:, None], axis=-1), axis=1)
        edges = np.unique(np.quantile(radius, radius_quantiles))
        group = np.searchsorted(edges, radius)  # radius <= edges[group]
        self._groups = []
        for g in np.unique(group):
            ids = np.flatnonzero(group == g)
            self._groups.append((ids, float(radius[ids].max()), cKDTree(centroids[ids])))
        self._vtree = cKDTree(self.vertices[np.unique(self.tris)])

    def closest(self, points, chunk: int = 8192):
        """(closest points f64[N, 3], distances f64[N]) on the surface."""
        points = np.asarray(points, np.float64)
        best_q = np.empty_like(points)
        best_d = np.empty(len(points))
        for start in range(0, len(points), chunk):
            p = points[start : start + chunk]
            d_v, _ = self._vtree.query(p)
            tri, owner = [], []
            for ids, r, tree in self._groups:
                lists = tree.query_ball_point(p, d_v + r + 1e-12, return_sorted=False)
                counts = np.fromiter((len(x) for x in lists), np.int64, len(lists))
                if counts.sum():
                    tri.append(ids[np.concatenate(lists).astype(np.int64)])
                    owner.append(np.repeat(np.arange(len(p)), counts))
            tri, owner = np.concatenate(tri), np.concatenate(owner)
            c = self.vertices[self.tris[tri]]
            q = closest_points_on_triangles(p[owner], c[:, 0], c[:, 1], c[:, 2])
            d = np.linalg.norm(q - p[owner], axis=1)
            # Per query, the candidate with the smallest distance (every query has >= 1).
            order = np.lexsort((d, owner))
            first = order[np.searchsorted(owner[order], np.arange(len(p)))]
            best_q[start : start + chunk] = q[first]
            best_d[start : start + chunk] = d[first]
        return best_q, best_d


def icp_similarity(points, surface: SurfaceQuery, init: Similarity, iters: int = 50, tol: float = 1e-6) -> Similarity:
    """Refine `init` (mapping `points` towards the surface) by ICP with scale:
    closest surface points, then Umeyama, until the mean distance stops improving."""
    current, prev = init, np.inf
    for _ in range(iters):
        moved = current.apply(points)
        target, dist = surface.closest(moved)
        step = umeyama(moved, target)
        current = current.then(step)
        err = float(np.mean(dist))
        if prev - err < tol * max(err, 1e-12):
            break
        prev = err
    return current


def mesh_error(
    pred_vertices,
    pred_tris,
    gt_points,
    pred_landmarks,
    gt_landmarks,
    nose_tip,
    units_per_mm: float = UNITS_PER_MM,
    crop_radius_mm: float = CROP_RADIUS_MM,
    icp_iters: int = 50,
    icp_points: int = 2000,
) -> MeshError:
    """Point-to-surface error (mm) of a predicted mesh against ground-truth points.

    pred_vertices: f[N, 3]    predicted canonical shape (model units, e.g. decimetres)
    pred_tris: i[T, 3]        its triangles, zero-based
    gt_points: f[M, 3]        ground-truth points (scan or ground-truth mesh vertices)
    pred_landmarks, gt_landmarks: f[K, 3]   corresponding 3D landmarks (K >= 3) for the
                              initial alignment, e.g. the 68 keypoint vertices of each
    nose_tip: f[3]            ground-truth nose tip; points farther than `crop_radius_mm`
                              from it are ignored
    icp_points: ground-truth points used per ICP iteration (evenly strided subset, for
                speed); the final error uses all cropped points.
    Returns `MeshError` (median, mean, std in mm, number of points, final scale).

    The ground truth is aligned to the prediction (whose surface is queried) and errors are
    divided by the alignment scale, which equals moving the prediction onto the ground truth.
    """
    pred_vertices = _points(pred_vertices, "pred_vertices")
    gt_points = _points(gt_points, "gt_points")
    pred_landmarks = _points(pred_landmarks, "pred_landmarks")
    gt_landmarks = _points(gt_landmarks, "gt_landmarks")
    nose_tip = np.asarray(nose_tip, np.float64)
    tris = np.asarray(pred_tris)
    if tris.ndim != 2 or tris.shape[1] != 3 or not np.issubdtype(tris.dtype, np.integer):
        raise ValueError(f"pred_tris must be integer [T, 3] zero-based, got {tris.shape} {tris.dtype}")
    if tris.min() < 0 or tris.max() >= len(pred_vertices):
        raise ValueError(f"pred_tris indexes vertices {tris.min()}..{tris.max()} but there are {len(pred_vertices)}")
    if pred_landmarks.shape != gt_landmarks.shape or len(gt_landmarks) < 3:
        raise ValueError(
            f"pred_landmarks and gt_landmarks must be corresponding f[K, 3] with K >= 3, got "
            f"{pred_landmarks.shape} and {gt_landmarks.shape}"
        )
    if nose_tip.shape != (3,) or not np.all(np.isfinite(nose_tip)):
        raise ValueError(f"nose_tip must be a finite f[3], got {nose_tip}")

    crop = np.linalg.norm(gt_points - nose_tip, axis=1) <= crop_radius_mm * units_per_mm
    points = gt_points[crop]
    if len(points) == 0:
        raise ValueError(
            f"no ground-truth point lies within {crop_radius_mm} mm of the nose tip; check units_per_mm "
            f"({units_per_mm} model units per mm)"
        )
    surface = SurfaceQuery(pred_vertices, tris)
    # Ground truth -> prediction: landmarks first, then ICP on a strided subset of the crop.
    init = umeyama(gt_landmarks, pred_landmarks)
    subset = points[:: max(1, len(points) // icp_points)]
    sim = icp_similarity(subset, surface, init, iters=icp_iters)
    _, dist = surface.closest(sim.apply(points))
    mm = dist / sim.scale / units_per_mm
    return MeshError(float(np.median(mm)), float(np.mean(mm)), float(np.std(mm)), int(len(points)), 1.0 / sim.scale)


def _points(x, name):
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be f[N, 3] (one mesh, no batch axis), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(x)))} non-finite values; check the reconstruction")
    return x
