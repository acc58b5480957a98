"""UV parametrization of the face mesh, from its topology and mean shape (nothing to download).

The BFM front mesh is an annulus: an outer boundary and one hole (the mouth). Each hole is
closed with a virtual fan around its centroid, which makes the mesh a disk; the outer
boundary goes onto the unit circle by 3D arc length, and every inner vertex becomes a
convex combination of its neighbours with Floater's mean-value weights, computed on the
mean shape (one sparse solve with scipy). The weights are positive, so by Tutte's and
Floater's theorem the map is a bijection: no UV triangle is flipped or overlaps another.
Mean-value weights follow the surface's angles and lengths, so the area distortion stays
far below that of the uniform (Tutte) weights. The result is rotated so that v points up
the face (+y of the mean shape), u to its left (+x), and scaled into [MARGIN, 1 - MARGIN].

Conventions: uv in [0, 1], origin at the bottom left (OBJ `vt`); a texture image's top
row is v = 1. Deterministic: a function of the triangles and mean shape only, and cheap
enough (one sparse factorization) that it needs no cache.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

MARGIN = 0.01  # empty border of the unit square around the disk


def boundary_loops(tris) -> list[np.ndarray]:
    """Boundary loops of a triangle mesh, longest first, each walking the direction of its
    triangles' own edges (so a loop keeps the mesh orientation). Raises ValueError for
    meshes that are not manifold along their boundary."""
    tris = np.asarray(tris, np.int64)
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    _, inverse, counts = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True, return_counts=True)
    if counts.max(initial=0) > 2:
        raise ValueError(f"the mesh has {(counts > 2).sum()} edges shared by more than two triangles; "
                         "a UV map needs a manifold mesh")
    border = edges[counts[inverse.ravel()] == 1]
    nxt = dict(zip(border[:, 0].tolist(), border[:, 1].tolist()))
    if len(nxt) != len(border):
        raise ValueError("the mesh boundary touches itself at a vertex (a bow tie); a UV map needs a manifold mesh")
    loops, seen = [], set()
    for start in nxt:  # each loop starts where the triangles' edge order first meets it
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(np.asarray(loop, np.int64))
    return sorted(loops, key=len, reverse=True)


def mean_value_weights(tris, points) -> sp.csr_matrix:
    """Floater's mean-value weights w_ij = (tan(a/2) + tan(b/2)) / |x_j - x_i| over the two
    angles at vertex i next to edge ij, as a sparse f64[V, V] (row i: the weights of i's
    neighbours). Positive for any non-degenerate triangle."""
    tris = np.asarray(tris, np.int64)
    p = np.asarray(points, np.float64)[tris]
    rows, cols, vals = [], [], []
    for k in range(3):
        a, b = p[:, (k + 1) % 3] - p[:, k], p[:, (k + 2) % 3] - p[:, k]
        la, lb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.clip(np.sum(a * b, axis=1) / np.maximum(la * lb, 1e-300), -1.0, 1.0)
        half_tan = np.tan(0.5 * np.arccos(cos))
        rows += [tris[:, k], tris[:, k]]
        cols += [tris[:, (k + 1) % 3], tris[:, (k + 2) % 3]]
        vals += [half_tan / np.maximum(la, 1e-300), half_tan / np.maximum(lb, 1e-300)]
    n = len(points)
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()


def _close_holes(tris: np.ndarray, points: np.ndarray, holes: list[np.ndarray]):
    """Add one centroid vertex per hole and a fan of triangles oriented like the mesh."""
    extra_points, extra_tris = [], []
    for k, hole in enumerate(holes):
        centre = len(points) + k
        extra_points.append(points[hole].mean(axis=0))
        # The loop walks a -> b along its triangles' edges; the fan triangle (b, a, centre) has
        # the opposite edge, so it is wound like its neighbour.
        extra_tris.append(np.stack([np.roll(hole, -1), hole, np.full(len(hole), centre)], axis=1))
    return np.concatenate([tris, *extra_tris]), np.concatenate([points, np.reshape(extra_points, (-1, 3))])


def mesh_uv(tris, points) -> np.ndarray:
    """UV coordinates f32[V, 2] in [0, 1] of a disk or a disk with holes (see the module
    docstring). tris: i[T, 3] zero-based; points: f[V, 3] (the mean shape)."""
    tris = np.asarray(tris, np.int64)
    points = np.asarray(points, np.float64)
    n = len(points)
    if np.bincount(tris.ravel(), minlength=n).min() == 0:
        raise ValueError("some vertices belong to no triangle; remove them before computing a UV map")
    loops = boundary_loops(tris)
    if not loops:
        raise ValueError("the mesh is closed (no boundary); a disk-like mesh is needed for a UV map without seams")
    all_tris, all_points = _close_holes(tris, points, loops[1:])
    edges = np.concatenate([all_tris[:, [0, 1]], all_tris[:, [1, 2]], all_tris[:, [2, 0]]])
    num_edges = len(np.unique(np.sort(edges, axis=1), axis=0))
    if len(all_points) - num_edges + len(all_tris) != 1:
        raise ValueError("the mesh is not a disk once its holes are closed (it has handles); cut it first")

    outer = loops[0]
    seg = np.linalg.norm(points[np.roll(outer, -1)] - points[outer], axis=1)
    theta = 2 * np.pi * np.concatenate([[0.0], np.cumsum(seg)[:-1]]) / seg.sum()
    uv = np.zeros((len(all_points), 2))
    uv[outer] = np.stack([np.cos(theta), np.sin(theta)], axis=1)

    weights = mean_value_weights(all_tris, all_points)
    laplacian = (sp.diags(np.asarray(weights.sum(axis=1)).ravel()) - weights).tocsr()
    on_boundary = np.zeros(len(all_points), bool)
    on_boundary[outer] = True
    inner = np.flatnonzero(~on_boundary)
    system = laplacian[inner][:, inner].tocsc()
    rhs = -(laplacian[inner][:, outer] @ uv[outer])
    uv[inner] = spla.splu(system).solve(rhs)
    uv = uv[:n]

    # Turn the disk so that it matches the frontal view of the shape: the rotation (Procrustes,
    # no reflection) from the centred uv to the centred (x, y); mirror when the triangles are
    # wound clockwise as seen from the front, so the texture never shows the face mirrored.
    xy = points[:, :2] - points[:, :2].mean(axis=0)
    u_c = uv - uv.mean(axis=0)
    if np.linalg.det(u_c.T @ xy) < 0:
        uv[:, 0] = -uv[:, 0]
        u_c[:, 0] = -u_c[:, 0]
    left, _, right = np.linalg.svd(u_c.T @ xy)
    rot = left @ right
    if np.linalg.det(rot) < 0:  # nearest proper rotation
        left[:, -1] = -left[:, -1]
        rot = left @ right
    uv = uv @ rot
    return (0.5 + (0.5 - MARGIN) * uv).astype(np.float32)


def face_uv(model) -> np.ndarray:
    """UV coordinates f32[V, 2] of a `FaceModel` from its triangles and mean shape."""
    return mesh_uv(np.asarray(model.tris), np.asarray(model.mean_shape))


def uv_distortion(uv, tris, points) -> dict:
    """How far the UV map is from the surface: flipped triangles (signed UV area of the
    other sign than the total), the per-triangle area ratio r = (UV area share) / (3D area
    share) at its 5th / 50th / 95th percentile, min and max (1 everywhere is an area-
    preserving map), the area-weighted mean |ln r|, the area-weighted mean angle error in
    degrees (0 for a conformal map), and the share of the unit square the mesh covers."""
    uv = np.asarray(uv, np.float64)
    tris = np.asarray(tris, np.int64)
    p = np.asarray(points, np.float64)[tris]
    q = uv[tris]
    e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    signed = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    area3 = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    sign = np.sign(signed.sum())
    ratio = (np.abs(signed) / np.abs(signed).sum()) / (area3 / area3.sum())
    share = area3 / area3.sum()

    def angles(c):
        out = []
        for k in range(3):
            a, b = c[:, (k + 1) % 3] - c[:, k], c[:, (k + 2) % 3] - c[:, k]
            cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
            out.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
        return np.stack(out, axis=1)

    angle_err = np.abs(angles(q) - angles(p)).mean(axis=1)
    p5, p50, p95 = np.percentile(ratio, [5, 50, 95])
    return {
        "flipped": int(np.sum(signed * sign <= 0)),
        "area_ratio_p5": float(p5), "area_ratio_median": float(p50), "area_ratio_p95": float(p95),
        "area_ratio_min": float(ratio.min()), "area_ratio_max": float(ratio.max()),
        "area_log_mean_abs": float(np.sum(share * np.abs(np.log(ratio)))),
        "angle_error_deg": float(np.sum(share * angle_err)),
        "coverage": float(np.abs(signed).sum()),
        "in_unit_square": bool(uv.min() >= 0.0 and uv.max() <= 1.0),
    }
