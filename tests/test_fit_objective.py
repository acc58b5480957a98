"""The fitting objective's batch-minor path (formation, sampled rendering, loss terms)
against per-face references: plain autodiff of the normals formula, `render.interpolate`,
`losses.*` and `fit.objective.face_terms` over the full-image renderer. Mesh
tables are passed to jitted functions as arguments, never closed over: as constants XLA
constant-folds the normals VJP's index tables for tens of seconds. The synthetic-model
tests compile each program once (module fixtures).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import grid_mesh, normals_reference
from jaxface import formation, losses
from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import flip_y
from jaxface.fit.init import solve_light
from jaxface.fit.objective import PhotoData, face_terms, photo_terms, region_samples
from jaxface.model.region import mesh_tables, photo_region, point_buf_is_complete, region_bases
from jaxface.render import batch_samples, interpolate, interpolate_samples, pixel_samples, render, z_buffers
from jaxface.render.rasterize import Fragments
from jaxface.synth_data import SceneConfig, make_scene

CAMERA = Camera()


def _split(shapes):
    """f[B, V, 3] -> the batch-minor (x, y, z), each f[V, B]."""
    return tuple(shapes[:, :, i].T for i in range(3))


def _normals_vm(shapes, tris, point_buf):
    """`formation.vertex_normals` (batch minor) in the per-face layout f[B, V, 3]."""
    mesh = mesh_tables(tris, point_buf)
    return jnp.stack(formation.vertex_normals(_split(shapes), mesh), axis=-1).transpose(1, 0, 2)


def _normals_ref(shapes, tris, point_buf):
    """Plain autodiff of the per-face formula, one face at a time."""
    return jax.vmap(normals_reference, in_axes=(0, None, None))(shapes, tris, point_buf)


def _grad(normals_fn):
    return jax.grad(lambda s, w, tris, buf: jnp.sum(normals_fn(s, tris, buf) * w))


# Jitted once per dtype and mesh size (eager dispatch of these small graphs is slower than compiling).
_vm_jit, _ref_jit = jax.jit(_normals_vm), jax.jit(_normals_ref)
_vm_grad_jit, _ref_grad_jit = jax.jit(_grad(_normals_vm)), jax.jit(_grad(_normals_ref))
_pixel_samples = jax.jit(pixel_samples, static_argnums=4)


def _grid_shapes(rng, batch, noise, dtype):
    """Shapes f[B, 36, 3] on the 6 x 6 grid of `tiny_model` (a bumped sheet plus noise)."""
    ii, jj = np.meshgrid(np.linspace(-0.8, 0.8, 6), np.linspace(-0.8, 0.8, 6), indexing="ij")
    mean = np.stack([jj.ravel(), -ii.ravel(), 0.3 - 0.3 * (ii.ravel() ** 2 + jj.ravel() ** 2)], -1)
    return (mean[None] + noise * rng.normal(size=(batch, 36, 3))).astype(dtype)


# ----------------------------------------------------------------------------- normals


@pytest.fixture(scope="module")
def full_normals(synthetic_model):
    """Normals and gradients of 3 noisy mean shapes of the full model, both paths."""
    m = synthetic_model
    rng = np.random.default_rng(0)
    # Noise well below the edge length (~0.01): sliver triangles would make float32 itself the limit.
    shapes = jnp.asarray(m.mean_shape[None] + 1e-3 * rng.normal(size=(3, *m.mean_shape.shape)), jnp.float32)
    w = jnp.asarray(rng.normal(size=shapes.shape), jnp.float32)
    vm = jax.jit(_normals_vm)(shapes, m.tris, m.point_buf)
    ref = jax.jit(_normals_ref)(shapes, m.tris, m.point_buf)
    g_vm = jax.jit(_grad(_normals_vm))(shapes, w, m.tris, m.point_buf)
    g_ref = jax.jit(_grad(_normals_ref))(shapes, w, m.tris, m.point_buf)
    return vm, ref, g_vm, g_ref


def test_vertex_normals_vm_values_match_formation(full_normals):
    vm, ref, _, _ = full_normals
    assert vm.shape == ref.shape == (3, 35709, 3)
    np.testing.assert_allclose(np.linalg.norm(vm, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vm, ref, atol=1e-5)


def test_vertex_normals_vm_gradient_matches_autodiff_full_model(full_normals):
    _, _, g_vm, g_ref = full_normals
    scale = float(jnp.max(jnp.abs(g_ref)))
    assert scale > 0 and np.all(np.isfinite(g_vm))
    err = np.abs(np.asarray(g_vm) - np.asarray(g_ref))
    assert np.all(err <= 1e-4 * scale), float(np.max(err / scale))


def test_vertex_normals_vm_gradient_matches_finite_differences_float64(tiny_model):
    rng = np.random.default_rng(1)
    shapes = _grid_shapes(rng, 2, 0.05, np.float64)
    w = rng.normal(size=shapes.shape)
    tris, buf = np.asarray(tiny_model.tris), np.asarray(tiny_model.point_buf)
    with jax.enable_x64(True):
        s = jnp.asarray(shapes)
        loss = jax.jit(lambda x: jnp.sum(_normals_vm(x, tris, buf) * w))
        grad = _vm_grad_jit(s, w, tris, buf)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(grad, _ref_grad_jit(s, w, tris, buf), rtol=1e-10, atol=1e-12)
        eps = 1e-6
        for idx in [(0, 0, 0), (0, 7, 1), (0, 20, 2), (1, 3, 1), (1, 14, 2), (1, 35, 0)]:
            step = np.zeros(shapes.shape)
            step[idx] = eps
            fd = float((loss(s + step) - loss(s - step)) / (2 * eps))
            assert abs(grad[idx]) > 1e-2
            assert abs(fd - float(grad[idx])) < 1e-6 * abs(fd), (idx, fd, float(grad[idx]))


def test_vertex_normals_vm_degenerate_triangles(tiny_model):
    """Zero-area faces and a vertex whose only face is degenerate take the eps branch of
    normalize (as torch: x / max(|x|, 1e-12)); values and gradients equal the reference.

    Collapsed edges join adjacent corners (0-1 or 1-2) of each triangle using them, so an
    edge vector is exactly 0 and so is the cross product, whatever FMA contraction XLA does
    (corners 0 and 2 equal give a = -b, whose cross is rounding noise under FMA).
    """
    tris, buf = np.asarray(tiny_model.tris), np.asarray(tiny_model.point_buf)
    assert list(buf[0][buf[0] < len(tris)]) == [0] and list(tris[0]) == [0, 6, 1]  # vertex 0: triangle 0 only
    on_diagonal = [t for t in range(len(tris)) if {15, 20} <= set(tris[t])]
    assert [list(tris[t]) for t in on_diagonal] == [[14, 20, 15], [15, 20, 21]]
    rng = np.random.default_rng(2)
    shapes = _grid_shapes(rng, 2, 0.05, np.float32)
    shapes[:, 20] = shapes[:, 15]  # both triangles of the diagonal 15-20 have zero area
    shapes[:, 6] = shapes[:, 0]  # triangle 0 too: vertex 0's summed normal is zero
    s = jnp.asarray(shapes)
    w = jnp.asarray(rng.normal(size=shapes.shape), jnp.float32)

    vm, ref = _vm_jit(s, tris, buf), _ref_jit(s, tris, buf)
    assert np.all(np.isfinite(vm))
    np.testing.assert_array_equal(vm[:, 0], 0.0)
    np.testing.assert_allclose(vm, ref, atol=1e-6)

    g_vm, g_ref = _vm_grad_jit(s, w, tris, buf), _ref_grad_jit(s, w, tris, buf)
    assert np.all(np.isfinite(g_vm))
    # The eps branch scales by 1/eps = 1e12 per normalize: compare per vertex, on its own scale.
    scale = np.max(np.abs(np.asarray(g_ref)), axis=(0, 2), keepdims=True)
    assert scale.max() > 1e20 and np.median(scale) < 100  # both kinds of vertex are present
    err = np.abs(np.asarray(g_vm) - np.asarray(g_ref))
    assert np.all(err <= 1e-4 * scale), float(np.max(err / scale))


# ----------------------------------------------------------------------------- point_buf check


def test_point_buf_is_complete(synthetic_model):
    m = synthetic_model
    assert point_buf_is_complete(m.tris, m.point_buf)
    tris, buf = grid_mesh(6)
    num_tris = len(tris)
    assert point_buf_is_complete(tris, buf)

    truncated = buf.copy()
    truncated[7, 2] = num_tris  # one of vertex 7's triangles replaced by the padding id
    assert not point_buf_is_complete(tris, truncated)

    foreign = next(t for t in range(num_tris) if 7 not in tris[t])
    wrong = buf.copy()
    wrong[7, 2] = foreign  # same count, but lists a triangle without vertex 7
    assert not point_buf_is_complete(tris, wrong)

    extra = buf.copy()
    extra[7, 6] = foreign  # all of its triangles plus a foreign one in a padding slot
    assert not point_buf_is_complete(tris, extra)


def test_point_buf_is_complete_rejects_duplicates():
    tris, buf = grid_mesh(6)
    dup = buf.copy()
    dup[7, 1] = dup[7, 0]  # triangle buf[7, 0] twice, buf[7, 1] missing: the gather-only VJP is wrong
    assert not point_buf_is_complete(tris, dup)


def test_photo_region_keeps_what_the_loss_reads_with_exact_normals(synthetic_model, full_normals):
    m = synthetic_model
    region = photo_region(m)
    verts, local = np.asarray(region.vertices), np.asarray(region.local)
    tris = np.asarray(m.tris)
    num_kept = len(verts)
    assert 0.6 * m.num_vertices < num_kept < 0.85 * m.num_vertices
    np.testing.assert_array_equal(local[verts], np.arange(num_kept))
    assert np.sum(local < num_kept) == num_kept  # every other vertex maps to the padding id
    in_front = np.zeros(m.num_vertices, bool)
    in_front[np.asarray(m.front_mask_idx)] = True
    region_verts = np.unique(tris[in_front[tris].all(axis=1)])
    for needed in (region_verts, np.asarray(m.keypoints)):
        assert np.all(local[needed] < num_kept)
    np.testing.assert_array_equal(region.skin, np.flatnonzero(np.asarray(m.skin_mask) != 0))
    # The kept triangles are the model's (in local ids) and the sub-mesh passes the VJP's check.
    sub_tris = np.asarray(region.tris)
    assert set(map(tuple, verts[sub_tris])) <= set(map(tuple, tris))
    assert point_buf_is_complete(sub_tris, region.point_buf)
    # Normals on the sub-mesh equal the full model's on every region vertex.
    rng = np.random.default_rng(0)  # the shapes of `full_normals`
    shapes = jnp.asarray(m.mean_shape[None] + 1e-3 * rng.normal(size=(3, *m.mean_shape.shape)), jnp.float32)
    sub = jax.jit(_normals_vm)(shapes[:, verts], region.tris, region.point_buf)
    _, ref, _, _ = full_normals
    np.testing.assert_allclose(sub[:, local[region_verts]], ref[:, region_verts], atol=1e-5)
    # A traced model (fit under an outer jit) keeps the whole mesh.
    traced = jax.eval_shape(photo_region, m)
    assert traced.vertices.shape == (m.num_vertices,) and traced.tris.shape == m.tris.shape


# ----------------------------------------------------------------------------- pixel samples

H, W = 10, 12


def _screen_grid(rng):
    """A 4 x 4 grid mesh (18 triangles) covering an H x W image, in screen coordinates
    (x column, y row, depth), and its z-buffer ids computed by hand (the grid cannot overlap)."""
    tris, _ = grid_mesh(4)
    ii, jj = np.meshgrid(np.linspace(-0.5, H - 0.5, 4), np.linspace(-0.5, W - 0.5, 4), indexing="ij")
    verts = np.stack([jj.ravel(), ii.ravel(), 4 + 2 * rng.random(16)], -1)
    verts[:, :2] += 0.3 * rng.uniform(-1, 1, (16, 2)) * ((ii.ravel() % 3 > 0) & (jj.ravel() % 3 > 0))[:, None]
    rows, cols = np.mgrid[:H, :W]
    tri_id = np.full((H, W), -1, np.int32)
    for t, (a, b, c) in enumerate(tris):
        (xa, ya), (xb, yb), (xc, yc) = verts[a, :2], verts[b, :2], verts[c, :2]
        e = [(xb - xa) * (rows - ya) - (yb - ya) * (cols - xa),
             (xc - xb) * (rows - yb) - (yc - yb) * (cols - xb),
             (xa - xc) * (rows - yc) - (ya - yc) * (cols - xc)]
        inside = np.all([x >= 0 for x in e], 0) | np.all([x <= 0 for x in e], 0)
        tri_id[(tri_id < 0) & inside] = t
    assert np.all(tri_id >= 0)
    return tris, verts.astype(np.float32), Fragments(jnp.asarray(tri_id), jnp.zeros((H, W, 3)), jnp.zeros((H, W)))


def _keep(rng, tri_id, count):
    """bool[H, W]: `count` random covered pixels."""
    flat = np.zeros(H * W, bool)
    flat[rng.choice(np.flatnonzero(np.asarray(tri_id).ravel() >= 0), count, replace=False)] = True
    return flat.reshape(H, W)


def test_pixel_samples_lists_every_kept_pixel_once():
    rng = np.random.default_rng(3)
    tris, _, frag = _screen_grid(rng)
    keep = _keep(rng, frag.tri_id, 50)
    image = rng.random((H, W, 3)).astype(np.float32)
    corners, px, py, target, weight = _pixel_samples(frag.tri_id, jnp.asarray(tris), jnp.asarray(keep), jnp.asarray(image), 64)
    assert corners.shape == (64, 3) and corners.dtype == jnp.int32
    assert px.shape == py.shape == weight.shape == (64,) and target.shape == (64, 3)
    real = np.asarray(weight) > 0
    np.testing.assert_allclose(weight[:50], 1 / 50, rtol=1e-6)
    np.testing.assert_array_equal(weight[50:], 0.0)
    rows, cols = np.asarray(py[real]).astype(int), np.asarray(px[real]).astype(int)
    np.testing.assert_array_equal(py[real], rows)
    np.testing.assert_array_equal(rows * W + cols, np.flatnonzero(keep))  # each once, raster order
    np.testing.assert_array_equal(target[real], image[rows, cols])
    np.testing.assert_array_equal(corners[real], tris[np.asarray(frag.tri_id)[rows, cols]])


def test_pixel_samples_thins_evenly():
    rng = np.random.default_rng(4)
    tris, _, frag = _screen_grid(rng)
    keep = _keep(rng, frag.tri_id, 60)
    image = jnp.asarray(rng.random((H, W, 3)), jnp.float32)
    kept = np.flatnonzero(keep)
    for size, expect in ((30, kept[0::2]), (20, kept[0::3]), (60, kept)):  # first of each bucket
        _, px, py, _, weight = _pixel_samples(frag.tri_id, jnp.asarray(tris), jnp.asarray(keep), image, size)
        assert weight.shape == (size,)
        np.testing.assert_allclose(weight, 1 / size, rtol=1e-6)  # exactly `size` real samples
        np.testing.assert_array_equal(np.asarray(py) * W + np.asarray(px), expect)
        assert abs(float(jnp.sum(weight)) - 1.0) < 1e-6


def test_pixel_samples_takes_exactly_size_when_thinning():
    rng = np.random.default_rng(5)
    tris, _, frag = _screen_grid(rng)
    keep = _keep(rng, frag.tri_id, 41)
    _, _, _, _, weight = _pixel_samples(frag.tri_id, jnp.asarray(tris), jnp.asarray(keep), jnp.zeros((H, W, 3)), 1)
    assert float(jnp.sum(weight)) == 1.0  # 41 kept pixels, size 1: one sample (float32 once took none)


def test_batch_samples_layout_and_interpolation():
    """Flat ids b * V + v address image b's vertex v: interpolating the samples equals
    `render.interpolate` of each image at the sampled pixels."""
    rng = np.random.default_rng(6)
    batch, size, num_verts = 3, 40, 16
    cases = [_screen_grid(rng) for _ in range(batch)]
    tris = jnp.asarray(cases[0][0])
    verts = np.stack([v for _, v, _ in cases])  # [B, V, 3]
    frags = jax.tree.map(lambda *x: jnp.stack(x), *[f for _, _, f in cases])
    keeps = jnp.asarray(np.stack([_keep(rng, f.tri_id, n) for (_, _, f), n in zip(cases, (30, 40, 55))]))
    images = jnp.asarray(rng.random((batch, H, W, 3)), jnp.float32)
    per_image = jax.jit(jax.vmap(lambda f, k, im: pixel_samples(f.tri_id, tris, k, im, size)))(frags, keeps, images)
    s = jax.jit(batch_samples, static_argnums=5)(*per_image, num_verts)

    assert s.corners.shape == (3, batch, size) and s.corners.dtype == jnp.int32
    for x in (s.px, s.py, s.weight):
        assert x.shape == (batch, size) and x.dtype == jnp.float32
    assert s.target.shape == (3, batch, size) and s.target.dtype == jnp.float32
    b = np.arange(batch)
    np.testing.assert_array_equal(s.corners, np.moveaxis(np.asarray(per_image[0]), 2, 0) + num_verts * b[:, None])
    np.testing.assert_array_equal(s.target, np.moveaxis(np.asarray(per_image[3]), 2, 0))
    np.testing.assert_array_equal(s.weight, np.asarray(per_image[4]))
    np.testing.assert_allclose(jnp.sum(s.weight, 1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(jnp.sum(s.weight > 0, 1), [30, 40, 40])  # the third one thinned

    colors = rng.random((batch, num_verts, 3)).astype(np.float32)
    screen = (verts[..., 0].T, verts[..., 1].T, verts[..., 2].T)
    got = jax.jit(interpolate_samples)(tuple(colors[..., c].T for c in range(3)), screen, s)
    for i in range(batch):
        real = np.asarray(s.weight[i]) > 0
        rows, cols = np.asarray(s.py[i, real]).astype(int), np.asarray(s.px[i, real]).astype(int)
        want = interpolate(jnp.asarray(colors[i]), jax.tree.map(lambda x: x[i], frags), tris, jnp.asarray(verts[i]))
        for c in range(3):
            np.testing.assert_allclose(got[c][i, real], want[rows, cols, c], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got[c][i, ~real], 0.0)  # padding samples interpolate to 0


# ----------------------------------------------------------------------------- photometric stage


@pytest.fixture(scope="module")
def photo_case(synthetic_model):
    """Three synthetic photos (batch 3 shares `make_scene`'s compile with test_fit),
    coefficients perturbed off the truth, and the z-buffers there."""
    m = synthetic_model
    scene = make_scene(m, jax.random.key(3), 3, SceneConfig())
    assert scene.images.dtype == jnp.float32 and float(jnp.max(scene.images)) <= 1.0
    rng = np.random.default_rng(7)
    noise = Coeffs(id=0.3, exp=0.3, tex=0.3, angle=0.02, gamma=0.05, trans=0.01)
    coeffs = Coeffs(*(x + jnp.asarray(s * rng.normal(size=x.shape), jnp.float32) for x, s in zip(scene.coeffs, noise)))
    frags = jax.jit(jax.vmap(lambda c: render(m, c, CAMERA).fragments))(coeffs)
    return m, coeffs, scene.images, flip_y(scene.landmarks, CAMERA.image_size), frags


def test_refresh_z_buffer_matches_the_renderer(photo_case):
    """The fit's refresh rasterizes posed positions alone; same ids as the full renderer."""
    m, coeffs, _, _, frags = photo_case
    ids = jax.jit(z_buffers, static_argnums=2)(m, coeffs, CAMERA)
    assert ids.dtype == jnp.int32 and float(jnp.mean(ids >= 0)) > 0.2
    np.testing.assert_array_equal(ids, frags.tri_id)


def test_light_solve_matches_a_per_pixel_reference(synthetic_model):
    """The fit's light initialization (batch minor, at the pixel samples) against the
    ridge least squares over every region pixel of the per-face renderer, in numpy."""
    m = synthetic_model
    scene = make_scene(m, jax.random.key(3), 3, SceneConfig())
    coeffs = scene.coeffs._replace(gamma=jnp.zeros_like(scene.coeffs.gamma))  # unused by the solve
    ridge = 1e-3

    @jax.jit
    def solve(model, region, coeffs, images):
        samples = region_samples(model, region, z_buffers(model, coeffs, CAMERA), images, 224 * 224 // 2)
        return solve_light(region_bases(model, region), coeffs, samples, CAMERA, ridge)

    @jax.jit
    def features(model, coeffs):  # per pixel: albedo_c * Y_k, [B, H * W, 3, 9], and the region mask
        def one(c):
            face = formation.form_face(model, c, CAMERA)
            feats = (face.albedo[:, :, None] * formation.sh_basis(face.normals)[:, None, :]).reshape(-1, 27)
            frags = render(model, c, CAMERA).fragments
            pix = interpolate(feats, frags, model.tris, formation.screen_coords(face.uv, face.depth, CAMERA))
            return pix.reshape(-1, 3, 9), losses.region_mask(model, frags.tri_id).reshape(-1)

        return jax.vmap(one)(coeffs)

    got = np.asarray(solve(m, photo_region(m), coeffs, scene.images))
    assert got.shape == (3, 27) and got.dtype == np.float32
    pix, mask = (np.asarray(x, np.float64) for x in features(m, coeffs))
    images = np.asarray(scene.images, np.float64).reshape(3, -1, 3)
    for b in range(3):
        a = pix[b][mask[b] > 0]  # [N, 3, 9]
        rhs = images[b][mask[b] > 0] - formation.AMBIENT_OFFSET * a[:, :, 0]
        for c in range(3):
            gram = a[:, c].T @ a[:, c]
            gram += ridge * (np.trace(gram) / 9 + 1e-6) * np.eye(9)
            want = np.linalg.solve(gram, a[:, c].T @ rhs[:, c])
            # float32 Gram sums over ~15k pixels: the ill-conditioned channels carry ~1e-4 relative noise.
            np.testing.assert_allclose(got[b, 9 * c : 9 * c + 9], want, atol=3e-4 * np.abs(want).max() + 1e-5)


def _terms_vm(model, region, coeffs, images, targets, frags, size):
    samples = region_samples(model, region, frags.tri_id, images, size)
    terms = photo_terms(PhotoData(region_bases(model, region), None, samples), coeffs, targets, CAMERA)
    terms["albedo"] = losses.albedo_regularizer_per_image(losses.albedo_prior(model, region.skin), coeffs.tex)
    return terms


def _terms_ref(model, coeffs, images, targets, frags):
    face = lambda c, im, t, f: face_terms(model, c, im, t, f, CAMERA)  # noqa: E731
    return jax.vmap(face)(coeffs, images, targets, frags)


def _with_jacobian(terms_fn, coeffs, *args):
    """(terms {name: f32[B]}, {name: gradient of the term's batch sum, as Coeffs})."""
    out, pull = jax.vjp(lambda c: terms_fn(c, *args), coeffs)
    names = sorted(out)
    one_hot = {k: jnp.where(jnp.arange(len(names))[:, None] == i, 1.0, 0.0) * jnp.ones_like(out[k]) for i, k in enumerate(names)}
    (grads,) = jax.vmap(pull)(one_hot)  # each field with a leading term axis
    return out, {k: Coeffs(*(g[i] for g in grads)) for i, k in enumerate(names)}


@pytest.fixture(scope="module")
def photo_parity(photo_case):
    """Terms and per-term gradients of both paths (nothing thinned), plus the batch path's
    photometric term and sample counts at half the smallest region (one compile per path)."""
    m, coeffs, images, targets, frags = photo_case
    full = images.shape[1] * images.shape[2]
    half = int(jnp.min(jax.vmap(lambda f: jnp.sum(losses.region_mask(m, f.tri_id)))(frags))) // 2

    region = photo_region(m)  # concrete: the restricted mesh the fit uses
    assert region.vertices.shape[0] < 0.85 * m.num_vertices

    @jax.jit
    def batch_path(model, region, coeffs, images, targets, frags):
        terms = _with_jacobian(lambda c, *a: _terms_vm(model, region, c, *a, full), coeffs, images, targets, frags)
        thin = region_samples(model, region, frags.tri_id, images, half)
        photo = _terms_vm(model, region, coeffs, images, targets, frags, half)["photo"]
        return terms, photo, jnp.sum(thin.weight > 0, axis=1), jnp.sum(thin.weight, axis=1)

    reference = jax.jit(lambda model, c, *a: _with_jacobian(lambda c, *a: _terms_ref(model, c, *a), c, *a))
    vm, thin_photo, taken, weight_sum = batch_path(m, region, coeffs, images, targets, frags)
    return vm, reference(m, coeffs, images, targets, frags), (half, thin_photo, taken, weight_sum)


def test_batch_terms_match_face_terms(photo_parity):
    (vm, _), (ref, _), _ = photo_parity
    assert sorted(vm) == sorted(ref) == ["albedo", "gamma", "landmark", "photo"]
    for name in ref:
        assert vm[name].shape == (3,)
        assert np.all(np.asarray(ref[name]) > 0), name
        np.testing.assert_allclose(vm[name], ref[name], rtol=1e-5, err_msg=name)


def test_batch_terms_gradients_match_face_terms(photo_parity):
    (_, g_vm), (_, g_ref), _ = photo_parity
    for term in g_ref:
        for group, a, b in zip(Coeffs._fields, g_vm[term], g_ref[term]):
            scale = float(jnp.max(jnp.abs(b)))
            assert np.all(np.isfinite(a)), (term, group)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * scale, err_msg=f"{term}/{group}")
    # The photometric term depends on every group (its comparison above is not vacuous).
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in g_ref["photo"])


def test_thinned_photometric_term_is_close_to_full(photo_parity):
    _, (ref, _), (half, thin_photo, taken, weight_sum) = photo_parity
    assert half > 5000
    np.testing.assert_array_equal(taken, half)  # exactly `size` samples when thinning
    np.testing.assert_allclose(weight_sum, 1.0, rtol=1e-5)
    np.testing.assert_allclose(thin_photo, ref["photo"], rtol=0.03)
    assert not np.allclose(thin_photo, ref["photo"], rtol=1e-6, atol=0)  # really a different pixel set
