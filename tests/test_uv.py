"""The UV map of the face mesh (jaxface.model.uv) and its rasterization into texels."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import grid_mesh

from jaxface.model.uv import MARGIN, boundary_loops, face_uv, mesh_uv, uv_distortion
from jaxface.texture import texture_atlas, uv_texels


@pytest.fixture(scope="module")
def uv(synthetic_model):
    return face_uv(synthetic_model)


def test_face_uv_is_a_bijective_disk_in_the_unit_square(uv, synthetic_model):
    tris = np.asarray(synthetic_model.tris)
    assert uv.shape == (35709, 2) and uv.dtype == np.float32
    d = uv_distortion(uv, tris, synthetic_model.mean_shape)
    print("UV distortion (synthetic mean shape, BFM front topology):", d)
    assert d["flipped"] == 0 and d["in_unit_square"]
    # Every triangle wound counter-clockwise (the mesh's own orientation seen from the front).
    q = uv.astype(np.float64)[tris]
    e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    signed = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    assert signed.min() > 0
    assert MARGIN - 1e-6 <= uv.min() and uv.max() <= 1 - MARGIN + 1e-6
    # Mean-value weights keep the area distortion moderate (uniform Tutte weights: max ratio over 1000).
    assert 0.6 < d["area_ratio_p5"] and d["area_ratio_p95"] < 1.6 and d["area_ratio_max"] < 4
    assert d["area_log_mean_abs"] < 0.25 and d["angle_error_deg"] < 15
    # Oriented like the face: nose above the chin, the left eye (x < 0) left of the right one.
    kp = np.asarray(synthetic_model.keypoints)
    assert uv[kp[8], 1] < uv[kp[30], 1] < uv[kp[36], 1]
    assert uv[kp[36], 0] < uv[kp[30], 0] < uv[kp[45], 0]


def test_face_uv_is_deterministic(uv, synthetic_model):
    np.testing.assert_array_equal(face_uv(synthetic_model), uv)


def test_mesh_uv_of_another_shape_on_the_same_topology(synthetic_model):
    """The Basel model shares this topology with another mean shape: the map stays bijective."""
    shape = np.asarray(synthetic_model.mean_shape, np.float64)
    deeper = shape * [1.0, 1.1, 1.8] + [0, 0, 0.3] * np.exp(-(shape[:, :1] ** 2 + shape[:, 1:2] ** 2) / 0.1)
    d = uv_distortion(mesh_uv(synthetic_model.tris, deeper), synthetic_model.tris, deeper)
    print("UV distortion (deeper face, bulging centre):", d)
    assert d["flipped"] == 0 and d["in_unit_square"] and d["area_ratio_p95"] < 2


def test_boundary_loops_of_the_front_mesh(synthetic_model):
    loops = boundary_loops(synthetic_model.tris)
    assert [len(loop) for loop in loops] == [551, 78]  # the outline and the mouth
    tris = np.asarray(synthetic_model.tris, np.int64)
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    directed = edges[:, 0] * len(tris) * 3 + edges[:, 1]
    for loop in loops:  # each step is an edge of a triangle, in that triangle's direction
        assert np.isin(loop * len(tris) * 3 + np.roll(loop, -1), directed).all()


def test_mesh_uv_of_a_flat_grid():
    # A flat square grid (a disk): centred, upright, no triangle flipped.
    tris, _ = grid_mesh(7)
    jj, ii = np.meshgrid(np.arange(7.0), np.arange(7.0))
    points = np.stack([jj.ravel(), -ii.ravel(), np.zeros(49)], axis=1)
    uv = mesh_uv(tris, points)
    d = uv_distortion(uv, tris, points)
    assert d["flipped"] == 0 and d["in_unit_square"]
    assert uv[24, 0] == pytest.approx(0.5, abs=1e-6) and uv[24, 1] == pytest.approx(0.5, abs=1e-6)  # centre
    assert uv[0, 1] > uv[42, 1] and uv[0, 0] < uv[6, 0]  # top row up, first column left


@pytest.mark.parametrize("tris, match", [
    (np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]]), "closed"),
    (np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3], [0, 3, 1]]), "more than two"),
    (np.array([[0, 1, 2]]), "no triangle"),
])
def test_mesh_uv_refuses_meshes_without_a_disk_map(tris, match):
    points = np.random.default_rng(0).normal(size=(5 if match == "no triangle" else 4, 3))
    with pytest.raises(ValueError, match=match):
        mesh_uv(tris, points)


def test_uv_texels_against_brute_force():
    """Small mesh, every texel centre tested against every triangle in float64."""
    rng = np.random.default_rng(1)
    pts = rng.uniform(0.05, 0.95, size=(12, 2))
    from scipy.spatial import Delaunay

    tris = Delaunay(pts).simplices
    size = 24
    texels, tri, bary = uv_texels(pts, tris, size)
    centre = (np.arange(size) + 0.5) / size
    centres = np.stack(np.meshgrid(centre, 1 - centre), -1).reshape(-1, 2)
    expected = {}
    for t, (a, b, c) in enumerate(pts[tris]):
        m = np.stack([b - a, c - a], 1)
        lam = np.linalg.solve(m, (centres - a).T).T
        inside = (lam >= -1e-12).all(1) & (lam.sum(1) <= 1 + 1e-12)
        for k in np.flatnonzero(inside):
            expected.setdefault(k, t)  # lowest triangle id on shared edges
    assert sorted(expected) == texels.tolist()
    assert [expected[k] for k in texels] == tri.tolist()
    # Barycentrics reproduce the texel centres.
    np.testing.assert_allclose(np.einsum("nk,nkc->nc", bary, pts[tris[tri]]), centres[texels], atol=1e-6)


def test_atlas_of_the_face(synthetic_model, uv):
    atlas = texture_atlas(synthetic_model, 64, uv=uv)
    assert atlas.size == 64 and atlas.covered.sum() == len(atlas.texels)
    d = uv_distortion(uv, synthetic_model.tris, synthetic_model.mean_shape)
    assert abs(len(atlas.texels) / 64**2 - d["coverage"]) < 0.03  # texels inside ~ the covered area
    corners = np.asarray(synthetic_model.tris)[atlas.tri]
    rows, cols = np.divmod(atlas.texels, 64)
    np.testing.assert_allclose(np.einsum("nk,nkc->nc", atlas.bary, uv[corners]),
                               np.stack([(cols + 0.5) / 64, 1 - (rows + 0.5) / 64], 1), atol=1e-5)
    # Covered texels point to themselves, the others to a covered texel at most a few texels away.
    np.testing.assert_array_equal(atlas.nearest.reshape(-1)[atlas.texels], np.arange(len(atlas.texels)))
    rows_n, cols_n = np.divmod(atlas.texels[atlas.nearest], 64)
    far = np.hypot(rows_n - np.arange(64)[:, None], cols_n - np.arange(64)[None, :])
    assert far[atlas.covered].max() == 0 and far.max() < 64
    with pytest.raises(ValueError, match="texture size"):
        texture_atlas(synthetic_model, 4, uv=uv)
