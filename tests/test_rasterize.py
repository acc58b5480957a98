"""The z-buffer against an independent float64 loop rasterizer, plus its edge cases."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import Camera
from jaxface.render import Fragments, rasterize
from jaxface.render.rasterize import _rasterize
from render_fixtures import face_screen, random_mesh, reference_rasterize

# Small meshes are padded to one shape so these tests share a single compilation.
SMALL_V, SMALL_T, SMALL_H, SMALL_W = 128, 64, 40, 48


def _small(verts, tris):
    """Pad with unused vertices and degenerate (culled) triangles [0, 0, 0] at the end."""
    verts = np.concatenate([verts, np.ones((SMALL_V - len(verts), 3))]).astype(np.float32)
    tris = np.concatenate([tris, np.zeros((SMALL_T - len(tris), 3))]).astype(np.int32)
    return verts, tris


def _small_raster(verts, tris):
    return rasterize(*_small(verts, tris), SMALL_H, SMALL_W)


# Pixels whose triangle id may differ from the float64 reference: only near-ties (a pixel
# centre within float32 rounding of a shared edge, or two surfaces within one depth
# bucket). Measured: 0 on every mesh below; allowed: 1 in 10,000 covered pixels.
MAX_MISMATCH_FRACTION = 1e-4


def _check_against_reference(verts, tris, height, width):
    frags = rasterize(verts, tris, height, width)
    ref_id, ref_bary, ref_inv_depth = reference_rasterize(verts, tris, height, width)
    tri_id, bary, depth = (np.asarray(a) for a in frags)
    assert tri_id.shape == (height, width) and bary.shape == (height, width, 3) and depth.shape == (height, width)
    assert tri_id.dtype == np.int32
    covered = ref_id >= 0
    assert covered.sum() > 0.05 * height * width, "test mesh should cover a real part of the image"
    mismatch = tri_id != ref_id
    assert mismatch.sum() <= MAX_MISMATCH_FRACTION * covered.sum(), f"{mismatch.sum()} of {covered.sum()} pixels differ"
    _assert_near_ties(verts, tris, np.argwhere(mismatch), tri_id, ref_id)
    same = ~mismatch & covered
    np.testing.assert_allclose(bary[same], ref_bary[same], atol=1e-5)
    np.testing.assert_allclose(bary[same].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(1.0 / depth[same], ref_inv_depth[same], rtol=1e-5)
    assert np.all(bary[~covered] == 0) and np.all(depth[~covered] == 0)
    return tri_id


def _assert_near_ties(verts, tris, pixels, tri_id, ref_id):
    """Each differing pixel is covered by both triangles (up to 1e-4 px) at depths within 1e-3."""
    v = np.asarray(verts, np.float64)[tris]
    for i, j in pixels:
        a, b = tri_id[i, j], ref_id[i, j]
        assert a >= 0 and b >= 0, f"pixel {(i, j)}: one rasterizer left it empty ({a} vs {b})"
        inv_depths = []
        for t in (a, b):
            (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = v[t]
            area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            lam = np.array([(x1 - j) * (y2 - i) - (x2 - j) * (y1 - i), (x2 - j) * (y0 - i) - (x0 - j) * (y2 - i)]) / area2
            lam = np.append(lam, 1 - lam.sum())
            edge_px = lam * abs(area2) / np.array([np.hypot(x2 - x1, y2 - y1), np.hypot(x0 - x2, y0 - y2), np.hypot(x1 - x0, y1 - y0)])
            assert edge_px.min() > -1e-4, f"pixel {(i, j)} is {-edge_px.min()} px outside triangle {t}"
            inv_depths.append(lam @ (1 / v[t, :, 2]))
        assert abs(inv_depths[0] - inv_depths[1]) <= 1e-3 * max(inv_depths), f"pixel {(i, j)}: not a depth tie"


def test_face_mesh_matches_reference_224():
    verts, tris = face_screen(angle=(0.1, 0.35, 0.05))  # turned head: the nose occludes a cheek
    tri_id = _check_against_reference(verts, tris, 224, 224)
    assert 15_000 < (tri_id >= 0).sum() < 30_000


@pytest.mark.slow
def test_face_mesh_matches_reference_512_near_camera():
    # Bigger image and a face pulled towards the camera: triangles span up to ~20 px, so
    # most need the multi-tile path.
    camera = Camera.for_size(512)
    verts, tris = face_screen(angle=(-0.2, -0.3, 0.0), trans=(0.0, 0.0, 4.0), camera=camera)
    v = verts[tris]
    assert (v[..., 0].max(1) - v[..., 0].min(1)).max() > 8
    _check_against_reference(verts, tris, 512, 512)


@pytest.mark.parametrize(
    "seed, num_tris, height, width",
    [(1, 500, 120, 80), (2, 1500, 224, 224), (3, 600, 384, 512)],
)
def test_random_soup_matches_reference(seed, num_tris, height, width):
    verts, tris, culled = random_mesh(seed, num_tris, height, width)
    tri_id = _check_against_reference(verts, tris, height, width)
    v = verts[tris]
    assert culled.sum() > 0.03 * num_tris and not np.isin(tri_id, np.flatnonzero(culled)).any()
    assert ((v[..., 0].max(1) - v[..., 0].min(1)) > width).any(), "soup should hold triangles larger than the image"


def test_huge_offscreen_and_behind_camera_triangles():
    verts = np.array(
        [
            [-5000, -4000, 5], [9000, -3000, 5], [100, 8000, 5],  # covers the whole image, vertices far off
            [300, 10, 1], [400, 10, 1], [350, 60, 1],  # fully off-screen (right), nearer
            [10, 10, 0.5], [60, 10, 0.5], [10, 60, 0.0],  # a vertex at depth 0: culled
            [10, 10, 2], [10, 10, 2], [60, 60, 2],  # repeated vertex: zero area, culled
        ],
        np.float32,
    )
    tris = np.arange(12, dtype=np.int32).reshape(4, 3)
    frags = _small_raster(verts, tris)
    assert np.all(np.asarray(frags.tri_id) == 0)
    np.testing.assert_allclose(np.asarray(frags.depth), 5.0, rtol=1e-6)


def test_tie_rule_and_both_windings():
    # Triangle 0 (counter-clockwise on screen) is farther; 1 and 2 are the same clockwise
    # triangle at the same depth: nearer wins, then the lower id, whatever the order.
    far = [[2, 2, 4], [30, 2, 4], [2, 30, 4]]
    near = [[2, 2, 2], [2, 30, 2], [30, 2, 2]]
    verts = np.array(far + near + near, np.float32)
    for order in ([0, 1, 2], [2, 1, 0]):
        tris = np.arange(9, dtype=np.int32).reshape(3, 3)[order]
        tri_id = np.asarray(_small_raster(verts, tris).tri_id)
        expected = order.index(1) if order == [0, 1, 2] else min(order.index(1), order.index(2))
        assert np.all(tri_id[2:29, 2][:, None] == expected)
        assert set(np.unique(tri_id)) == {-1, expected}


def test_grid_is_watertight_and_edges_inclusive():
    # A 2-triangles-per-cell grid with vertices ON pixel centres: every edge passes through
    # pixel centres, so only inclusive edges with a deterministic tie leave no holes.
    n = 6
    g = np.stack(np.meshgrid(np.arange(n) * 3.0 + 1, np.arange(n) * 3.0 + 1), -1).reshape(-1, 2)
    verts = np.concatenate([g, np.full((n * n, 1), 3.0)], 1).astype(np.float32)
    q = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    tris = np.concatenate([np.stack([q, q + 1, q + n + 1], 1), np.stack([q, q + n + 1, q + n], 1)]).astype(np.int32)
    verts, tris = _small(verts, tris)
    tri_id = np.asarray(rasterize(verts, tris, SMALL_H, SMALL_W).tri_id)
    inside = np.zeros((SMALL_H, SMALL_W), bool)
    inside[1 : 3 * (n - 1) + 2, 1 : 3 * (n - 1) + 2] = True
    assert np.all((tri_id >= 0) == inside)
    ref_id = reference_rasterize(verts, tris, SMALL_H, SMALL_W)[0]
    assert np.array_equal(tri_id, ref_id)  # shared edges: equal depth, lower id


@functools.lru_cache(maxsize=1)
def _face_batch():
    angles = [(0.0, 0.0, 0.0), (0.1, -0.3, 0.1), (-0.2, 0.25, -0.05)]
    batch = [face_screen(angle=a) for a in angles]
    return np.stack([v for v, _ in batch]), batch[0][1]


def test_vmap_matches_single_and_does_not_recompile():
    verts, tris = _face_batch()
    batched = jax.jit(jax.vmap(lambda v: rasterize(v, tris, 224, 224)))(verts)
    for b in range(len(verts)):
        single = rasterize(verts[b], tris, 224, 224)
        np.testing.assert_array_equal(np.asarray(batched.tri_id[b]), np.asarray(single.tri_id))
        np.testing.assert_allclose(np.asarray(batched.bary[b]), np.asarray(single.bary), atol=1e-6)
    before = _rasterize._cache_size()
    rasterize(verts[1] + 0.25, tris, 224, 224)
    rasterize(verts[2] + 0.5, tris, 224, 224)
    assert _rasterize._cache_size() == before


def test_no_gradient_flows_through_rasterize():
    verts, tris = _small(*random_mesh(5, 20, SMALL_H, SMALL_W)[:2])
    depth, g = jax.value_and_grad(lambda v: rasterize(v, tris, SMALL_H, SMALL_W).depth.sum())(jnp.asarray(verts))
    assert depth > 0 and np.all(np.asarray(g) == 0)


def test_bad_inputs_raise_clear_errors():
    verts, tris = _small(*random_mesh(6, 4, SMALL_H, SMALL_W)[:2])
    with pytest.raises(ValueError, match="verts_screen must be"):
        rasterize(verts[None], tris, SMALL_H, SMALL_W)
    with pytest.raises(ValueError, match="tris must be an integer"):
        rasterize(verts, tris.astype(np.float32), SMALL_H, SMALL_W)
    with pytest.raises(ValueError, match="zero-based"):
        rasterize(verts, tris + SMALL_V - 10, SMALL_H, SMALL_W)
    with pytest.raises(ValueError, match="non-finite"):
        rasterize(np.where(np.arange(len(verts))[:, None] == 3, np.nan, verts), tris, SMALL_H, SMALL_W)
    with pytest.raises(ValueError, match="image size"):
        rasterize(verts, tris, 0, SMALL_W)
    assert isinstance(rasterize(verts, tris, SMALL_H, SMALL_W), Fragments)


def test_nan_vertices_under_jit_are_culled_not_spread():
    verts, tris = _small(*random_mesh(7, 30, SMALL_H, SMALL_W)[:2])
    verts[tris[3, 0], 0] = np.nan
    tri_id = np.asarray(jax.jit(lambda v: rasterize(v, tris, SMALL_H, SMALL_W).tri_id)(verts))
    assert not np.isin(3, tri_id) and (tri_id >= 0).mean() > 0.1
    assert np.array_equal(tri_id, reference_rasterize(verts, tris, SMALL_H, SMALL_W)[0])
