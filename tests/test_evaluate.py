"""mesh_error: similarity alignment, crop, exact point-to-surface distance, units."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxface.evaluate import (
    SurfaceQuery,
    Similarity,
    closest_points_on_triangles,
    mesh_error,
    umeyama,
)
from conftest import grid_mesh


def plane(n=31, spacing=10.0):
    """An n x n grid in the z = 0 plane (mm), centred at the origin, and its triangles."""
    tris, _ = grid_mesh(n)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    verts = np.stack([(jj.ravel() - n // 2) * spacing, (ii.ravel() - n // 2) * spacing, np.zeros(n * n)], -1)
    return verts, tris


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    rot = Rotation.from_euler("xyz", [0.4, -1.1, 2.0]).as_matrix()
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    sim = umeyama(src, dst)
    assert sim.scale == pytest.approx(2.5)
    np.testing.assert_allclose(sim.rot, rot, atol=1e-12)
    np.testing.assert_allclose(sim.apply(src), dst, atol=1e-12)
    both = Similarity(0.5, rot.T, np.zeros(3)).then(sim)
    np.testing.assert_allclose(both.apply(src), sim.apply(0.5 * src @ rot), atol=1e-12)


def test_closest_point_regions_by_hand():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    cases = [
        ([0.2, 0.2, 3.0], [0.2, 0.2, 0.0]),  # above the face
        ([-1.0, -1.0, 0.5], [0.0, 0.0, 0.0]),  # beyond vertex a
        ([2.0, -0.5, 0.0], [1.0, 0.0, 0.0]),  # beyond vertex b
        ([0.5, -2.0, 1.0], [0.5, 0.0, 0.0]),  # beyond edge ab
        ([1.0, 1.0, 0.0], [0.5, 0.5, 0.0]),  # beyond edge bc
        ([-1.0, 0.5, 0.0], [0.0, 0.5, 0.0]),  # beyond edge ca
    ]
    p = np.array([x for x, _ in cases])
    n = len(p)
    q = closest_points_on_triangles(p, np.tile(a, (n, 1)), np.tile(b, (n, 1)), np.tile(c, (n, 1)))
    np.testing.assert_allclose(q, [y for _, y in cases], atol=1e-12)


def test_surface_query_is_exact_against_brute_force():
    rng = np.random.default_rng(1)
    verts, tris = plane(9, 1.0)
    verts[:, 2] = rng.normal(size=len(verts)) * 0.4  # a bumpy sheet with uneven triangles
    verts[:, :2] += rng.uniform(-0.3, 0.3, size=(len(verts), 2))
    points = rng.uniform(-5, 5, size=(300, 3))
    _, dist = SurfaceQuery(verts, tris).closest(points)
    c = verts[tris]
    n, t = len(points), len(tris)
    q = closest_points_on_triangles(np.repeat(points, t, 0), *(np.tile(c[:, k], (n, 1)) for k in range(3)))
    brute = np.linalg.norm(q - np.repeat(points, t, 0), axis=1).reshape(n, t).min(1)
    np.testing.assert_allclose(dist, brute, atol=1e-12)


def test_plane_offset_is_point_to_surface_distance():
    verts, tris = plane()
    # Ground truth: triangle centroids lifted 2 mm; nearest vertices are farther than 2 mm.
    gt = verts[tris].mean(1) + np.array([0.0, 0.0, 2.0])
    nearest_vertex = np.min(np.linalg.norm(gt[:, None] - verts[None], axis=-1), axis=1)
    assert nearest_vertex.min() > 4.0
    err = mesh_error(verts, tris, gt, verts[:4], verts[:4], np.zeros(3), units_per_mm=1.0, icp_iters=0)
    assert err.median == pytest.approx(2.0, abs=1e-9) and err.mean == pytest.approx(2.0, abs=1e-9)
    assert err.std < 1e-9
    inside = np.linalg.norm(gt, axis=1) <= 95.0
    assert err.num_points == inside.sum() < len(gt)  # the 95 mm crop around the nose tip


def test_icp_removes_a_rigid_offset_of_a_curved_surface():
    verts, tris = plane(25, 4.0)
    verts[:, 2] = 40.0 - np.sum(verts[:, :2] ** 2, 1) / 100.0  # paraboloid cap, mm
    gt = verts @ Rotation.from_euler("xyz", [0.02, -0.03, 0.01]).as_matrix().T + np.array([1.5, -1.0, 0.7])
    err = mesh_error(verts, tris, gt, verts[::50], verts[::50], gt[len(gt) // 2], units_per_mm=1.0)
    assert err.mean < 0.15  # point-to-point ICP converges slowly along the cap; the border has no partners
    no_icp = mesh_error(verts, tris, gt, verts[::50], verts[::50], gt[len(gt) // 2], units_per_mm=1.0, icp_iters=0)
    assert no_icp.mean > 1.0


def test_face_under_known_similarity_has_zero_error(synthetic_model):
    v = np.asarray(synthetic_model.mean_shape, np.float64)
    tris = np.asarray(synthetic_model.tris)
    kp = np.asarray(synthetic_model.keypoints)
    rot = Rotation.from_euler("xyz", [0.3, -0.5, 0.2]).as_matrix()
    pred = 1.3 * v @ rot.T + np.array([0.5, -1.0, 2.0])
    err = mesh_error(pred, tris, v, pred[kp], v[kp], v[kp[30]])
    assert err.mean < 1e-3 and err.median < 1e-3  # mm
    assert err.scale == pytest.approx(1 / 1.3, rel=1e-6)
    # Same geometry in millimetres with units_per_mm=1 gives the same numbers; a bump does not.
    bumped = v.copy()
    bumped[:, 2] += 0.02 * np.exp(-np.sum((v[:, :2] - v[kp[30], :2]) ** 2, 1) / 0.05)  # up to 2 mm
    err_dm = mesh_error(bumped, tris, v, bumped[kp], v[kp], v[kp[30]])
    err_mm = mesh_error(100 * bumped, tris, 100 * v, 100 * bumped[kp], 100 * v[kp], 100 * v[kp[30]], units_per_mm=1.0)
    assert 0.05 < err_dm.mean < 2.0
    assert err_mm.mean == pytest.approx(err_dm.mean, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pred_vertices": np.zeros((4, 2))}, "pred_vertices"),
        ({"gt_points": np.full((3, 3), np.nan)}, "gt_points"),
        ({"pred_tris": np.array([[0, 1, 7]])}, "pred_tris"),
        ({"gt_landmarks": np.zeros((2, 3)), "pred_landmarks": np.zeros((2, 3))}, "K >= 3"),
        ({"nose_tip": np.array([1e3, 0.0, 0.0])}, "within"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.5]])
    args = dict(
        pred_vertices=v,
        pred_tris=np.array([[0, 1, 2], [1, 3, 2]]),
        gt_points=v,
        pred_landmarks=v,
        gt_landmarks=v,
        nose_tip=np.zeros(3),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mesh_error(**args)
