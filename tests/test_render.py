"""Interpolation gradients, the face renderer, batching and compilation counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxface import Coeffs, form_face
from jaxface.render import RenderOutput, interpolate, rasterize, render, render_mesh
from jaxface.render.renderer import _render
from render_fixtures import face_model

H, W = 24, 32


def _small_mesh():
    """Three overlapping triangles at different, per-vertex varying depths."""
    verts = np.array(
        [[2.3, 1.7, 2.0], [20.6, 3.1, 2.6], [6.2, 21.4, 3.1],
         [12.4, 4.2, 1.5], [29.1, 12.8, 1.9], [14.7, 22.6, 2.2],
         [1.2, 12.3, 4.0], [30.5, 20.2, 3.5], [16.1, 0.4, 3.8]],
        np.float32,
    )
    colors = np.random.default_rng(0).uniform(0.1, 0.9, (9, 3)).astype(np.float32)
    return verts, np.arange(9, dtype=np.int32).reshape(3, 3), colors


def test_interpolation_is_perspective_correct():
    verts, tris, _ = _small_mesh()
    frags = rasterize(verts, tris, H, W)
    # Camera-space points (x z, y z, z) of a unit-focal camera, interpolated per pixel, must
    # project back onto the pixel centre and have the fragment's depth.
    cam = np.concatenate([verts[:, :2] * verts[:, 2:], verts[:, 2:]], 1)
    p = np.asarray(interpolate(jnp.asarray(cam), frags, tris, verts))
    covered = np.asarray(frags.tri_id) >= 0
    assert covered.mean() > 0.4
    rows, cols = np.mgrid[:H, :W]
    np.testing.assert_allclose(p[..., 0][covered] / p[..., 2][covered], cols[covered], atol=2e-4)
    np.testing.assert_allclose(p[..., 1][covered] / p[..., 2][covered], rows[covered], atol=2e-4)
    np.testing.assert_allclose(p[..., 2][covered], np.asarray(frags.depth)[covered], rtol=1e-5)
    assert np.all(p[~covered] == 0)
    # Without positions the rasterizer's barycentrics give the same values.
    np.testing.assert_allclose(np.asarray(interpolate(jnp.asarray(cam), frags, tris)), p, rtol=1e-5, atol=1e-5)


def test_interpolate_gradients_match_finite_differences():
    verts, tris, colors = _small_mesh()
    frags = rasterize(verts, tris, H, W)
    bary = np.asarray(frags.bary)
    interior = np.argwhere((np.asarray(frags.tri_id) >= 0) & (bary.min(-1) > 0.05))
    assert len(interior) > 50
    rows, cols = interior[::5].T

    def pixels(v, c):
        return interpolate(c, frags, tris, v)[rows, cols]

    with jax.enable_x64(True):
        v64, c64 = jnp.asarray(verts, jnp.float64), jnp.asarray(colors, jnp.float64)
        assert pixels(v64, c64).dtype == jnp.float64
        check_grads(pixels, (v64, c64), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-5)
        loss = lambda v, c: jnp.sum(jnp.sin(3 * pixels(v, c)))  # noqa: E731
        g64 = jax.grad(loss, argnums=(0, 1))(v64, c64)
    # The float32 path gives the same gradients; every vertex of a visible triangle gets one.
    g32 = jax.grad(loss, argnums=(0, 1))(jnp.asarray(verts), jnp.asarray(colors))
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)
    assert np.all(np.abs(np.asarray(g32[0])).sum(1) > 0)


def _coeffs(angle=(0.0, 0.0, 0.0), trans=(0.0, 0.0, 0.0), gamma0=0.0):
    c = Coeffs.zeros()
    return c._replace(
        angle=jnp.asarray(angle, jnp.float32),
        trans=jnp.asarray(trans, jnp.float32),
        gamma=c.gamma.at[0].set(gamma0),
    )


def test_render_face_outputs_and_composite():
    model = face_model()
    coeffs = _coeffs(angle=(0.1, 0.2, 0.0), gamma0=0.8)  # bright: some colours exceed 1 and clip
    background = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (224, 224, 3)), jnp.float32)
    out = render(model, coeffs, background=background)
    assert isinstance(out, RenderOutput) and out.image.shape == (224, 224, 3) and out.mask.shape == (224, 224)
    image, mask, composite = (np.asarray(a) for a in (out.image, out.mask, out.composite))
    tri_id = np.asarray(out.fragments.tri_id)
    np.testing.assert_array_equal(mask, (tri_id >= 0).astype(np.float32))
    assert 15_000 < mask.sum() < 30_000
    assert image.min() >= 0 and image.max() <= 1 and np.all(image[mask == 0] == 0)
    np.testing.assert_array_equal(composite[mask == 0], np.asarray(background)[mask == 0])
    np.testing.assert_array_equal(composite[mask == 1], image[mask == 1])
    # Each pixel is the clipped barycentric blend of the lit vertex colours of form_face.
    colors = np.asarray(form_face(model, coeffs).colors)
    assert colors.max() > 1
    tris = np.asarray(model.tris)
    i, j = np.nonzero(mask)
    blend = np.einsum("nk,nkc->nc", np.asarray(out.fragments.bary)[i, j], colors[tris[tri_id[i, j]]])
    np.testing.assert_allclose(image[i, j], np.clip(blend, 0, 1), atol=1e-5)
    verts, tris, colors = _small_mesh()
    assert render_mesh(verts, colors, tris, H, W).composite is None


def test_render_mesh_other_image_size():
    # An overlay at an original-photo size (non-square): the face mesh scaled by 1.6.
    verts, tris = _face_verts()
    big = verts * np.array([1.6, 1.6, 1.0], np.float32) + np.array([40.0, 10.0, 0.0], np.float32)
    colors = jnp.full((verts.shape[0], 3), 0.5, jnp.float32)
    out = render_mesh(big, colors, tris, 360, 480)
    assert out.image.shape == (360, 480, 3) and out.mask.shape == (360, 480)
    mask = np.asarray(out.mask)
    np.testing.assert_allclose(np.asarray(out.image)[mask == 1], 0.5, atol=1e-6)
    assert np.all(np.asarray(out.image)[mask == 0] == 0)
    # The face covers 1.6^2 times its 224x224 area (19,750 px), placed where it was moved.
    assert abs(mask.sum() / (1.6**2 * 19_750) - 1) < 0.02
    rows, cols = np.nonzero(mask)
    assert abs(cols.min() - (1.6 * verts[:, 0].min() + 40)) < 2 and abs(rows.max() - (1.6 * verts[:, 1].max() + 10)) < 2


def _face_verts():
    from jaxface.formation import screen_coords

    face = form_face(face_model(), Coeffs.zeros())
    return np.asarray(screen_coords(face.uv, face.depth)), np.asarray(face_model().tris)


def test_photometric_loss_gradient_recovers_pose_and_light():
    model = face_model()
    truth = _coeffs(angle=(0.04, -0.06, 0.02), trans=(0.05, -0.04, 0.0), gamma0=-0.1)
    target = render(model, truth)

    def loss_fn(c):
        out = render(model, c)
        both = out.mask * target.mask
        return jnp.sum(both[..., None] * (out.image - target.image) ** 2) / jnp.maximum(both.sum(), 1.0)

    params = _coeffs()
    opt = optax.adam(5e-3)
    state = opt.init(params)
    step = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for _ in range(25):
        loss, grad = step(params)
        updates, state = opt.update(grad, state)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    assert losses[-1] < 0.35 * losses[0], losses
    for name in ("angle", "trans", "gamma"):
        before = np.linalg.norm(np.asarray(getattr(truth, name)))
        after = np.linalg.norm(np.asarray(getattr(truth, name) - getattr(params, name)))
        assert after < 0.8 * before, (name, before, after)


def test_vmap_render_matches_single_and_compiles_once():
    model = face_model()
    batch = Coeffs(*(jnp.stack(x) for x in zip(_coeffs(), _coeffs((0.1, -0.2, 0.0)), _coeffs(trans=(0.1, 0, 0.5)))))
    out = jax.vmap(render, in_axes=(None, 0))(model, batch)
    assert out.image.shape == (3, 224, 224, 3)
    for b in range(3):
        single = render(model, jax.tree.map(lambda x: x[b], batch))
        np.testing.assert_allclose(np.asarray(out.image[b]), np.asarray(single.image), atol=1e-6)
    before = _render._cache_size()
    render(model, _coeffs(angle=(0.0, 0.3, 0.0)))
    render(model, _coeffs(trans=(0.0, 0.1, 0.0)))
    assert _render._cache_size() == before


def test_bad_inputs_raise_clear_errors():
    model = face_model()
    with pytest.raises(ValueError, match=r"coeffs.id has shape \(2, 80\).*render_faces"):
        render(model, Coeffs.zeros((2,)))
    with pytest.raises(ValueError, match="background must be"):
        render(model, Coeffs.zeros(), background=jnp.zeros((224, 224)))
    verts, tris, colors = _small_mesh()
    with pytest.raises(ValueError, match="colors must be"):
        render_mesh(verts, colors[:, :2], tris, H, W)
    with pytest.raises(ValueError, match="attributes has 8 rows"):
        interpolate(colors[:8], rasterize(verts, tris, H, W), tris, verts)


def test_weighted_sum_backward_matches_autodiff():
    from jaxface.render.interpolate import weighted_sum

    rng = np.random.default_rng(7)
    bary = jnp.asarray(rng.uniform(size=(3, 5, 4)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(6, 3, 5, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(6, 5, 4)), jnp.float32)
    plain = lambda b, v: jnp.einsum("khw,ckhw->chw", b, v)  # noqa: E731
    out, vjp = jax.vjp(weighted_sum, bary, values)
    ref_out, ref_vjp = jax.vjp(plain, bary, values)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
