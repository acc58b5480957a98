"""Face formation against an independent numpy implementation of the SPEC formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxface import Camera, Coeffs, formation
from jaxface.coeffs import LAYOUT, NUM_COEFFS

from conftest import normals_reference

# float32 on both sides; bases sum over 80 terms of ~1e-2 -> agreement to ~1e-5 relative.
RTOL, ATOL = 2e-5, 2e-5


def random_coeffs(rng, batch=()):
    scale = {"id": 1.0, "exp": 1.0, "tex": 1.0, "angle": 0.3, "gamma": 0.2, "trans": 0.2}
    return Coeffs(**{n: jnp.asarray(rng.normal(size=(*batch, w)) * scale[n], jnp.float32) for n, w in LAYOUT})


# ---- independent numpy reference (written from SPEC, loops where the jax code vectorizes) ----

def np_rotation(angle):
    x, y, z = angle
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def np_normals(shape, tris, point_buf):
    fn = np.zeros((len(tris) + 1, 3))
    for t, (a, b, c) in enumerate(tris):
        n = np.cross(shape[a] - shape[b], shape[b] - shape[c])
        fn[t] = n / max(np.linalg.norm(n), 1e-12)
    vn = fn[point_buf].sum(1)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def np_sh(n):
    a = [np.pi, 2 * np.pi / np.sqrt(3), 2 * np.pi / np.sqrt(8)]
    c = [1 / np.sqrt(4 * np.pi), np.sqrt(3) / np.sqrt(4 * np.pi), 3 * np.sqrt(5) / np.sqrt(12 * np.pi)]
    x, y, z = n.T
    return np.stack([
        np.full_like(x, a[0] * c[0]), -a[1] * c[1] * y, a[1] * c[1] * z, -a[1] * c[1] * x,
        a[2] * c[2] * x * y, -a[2] * c[2] * y * z, 0.5 * a[2] * c[2] / np.sqrt(3) * (3 * z**2 - 1),
        -a[2] * c[2] * x * z, 0.5 * a[2] * c[2] * (x**2 - y**2)], axis=1)


def np_form(m, c, cam=Camera()):
    g = lambda x: np.asarray(x, np.float64)
    v = m.mean_shape.shape[0]
    shape = g(m.mean_shape).reshape(-1) + g(m.id_base).reshape(3 * v, -1) @ g(c.id) + g(m.exp_base).reshape(3 * v, -1) @ g(c.exp)
    shape = shape.reshape(v, 3)
    albedo = (g(m.mean_tex).reshape(-1) + g(m.tex_base).reshape(3 * v, -1) @ g(c.tex)).reshape(v, 3) / 255
    r = np_rotation(g(c.angle))
    posed = (r @ shape.T).T + g(c.trans)
    normals = (r @ np_normals(shape, np.asarray(m.tris), np.asarray(m.point_buf)).T).T
    gamma = g(c.gamma).reshape(3, 9).copy()
    gamma[:, 0] += 0.8
    colors = np.stack([albedo[:, ch] * (np_sh(normals) @ gamma[ch]) for ch in range(3)], 1)
    d = cam.distance - posed[:, 2]
    uv = np.stack([cam.focal * posed[:, 0] / d + cam.center, cam.focal * posed[:, 1] / d + cam.center], 1)
    return dict(shape=shape, albedo=albedo, vertices=posed, normals=normals, colors=colors, uv=uv, depth=d,
                landmarks=uv[np.asarray(m.keypoints)])


# ---- tests ----

def test_coeffs_roundtrip_and_layout():
    vec = np.arange(2 * NUM_COEFFS, dtype=np.float32).reshape(2, NUM_COEFFS)
    c = Coeffs.from_vector(vec)
    assert c.id.shape == (2, 80) and c.exp.shape == (2, 64) and c.tex.shape == (2, 80)
    assert c.angle[0, 0] == 224 and c.gamma[0, 0] == 227 and c.trans[0, 0] == 254
    np.testing.assert_array_equal(c.to_vector(), vec)
    # The 258th value of one TF release is ignored.
    c258 = Coeffs.from_vector(np.zeros((258,), np.float32))
    assert c258.to_vector().shape == (257,)
    with pytest.raises(ValueError, match="expected 257"):
        Coeffs.from_vector(np.zeros((200,)))


def test_rotation_matches_numpy_and_is_orthonormal():
    rng = np.random.default_rng(1)
    for _ in range(5):
        ang = rng.uniform(-np.pi, np.pi, 3)
        r = np.asarray(formation.rotation_matrix(jnp.asarray(ang, jnp.float32)))
        np.testing.assert_allclose(r, np_rotation(ang), atol=1e-6)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    # Hand-derived: 90 degrees about z maps x to y.
    r = formation.rotation_matrix(jnp.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(r @ jnp.array([1.0, 0.0, 0.0]), [0, 1, 0], atol=1e-7)


def test_projection_hand_derived():
    uv, d = formation.project(jnp.array([[0.0, 0.0, 0.0], [1.0, -0.5, 2.0]]))
    np.testing.assert_allclose(d, [10.0, 8.0])
    np.testing.assert_allclose(uv, [[112.0, 112.0], [112 + 1015 / 8, 112 - 0.5 * 1015 / 8]], rtol=1e-6)
    cam = Camera.for_size(448)
    uv2, _ = formation.project(jnp.array([[1.0, -0.5, 2.0]]), cam)
    np.testing.assert_allclose(uv2, 2 * np.asarray(uv[1:]), rtol=1e-6)


def test_sh_basis_orthonormal_constant_term():
    # The first basis value times pi is the ambient term the references use.
    n = jnp.array([[0.0, 0.0, 1.0]])
    y = np.asarray(formation.sh_basis(n))[0]
    np.testing.assert_allclose(y[0], np.pi / np.sqrt(4 * np.pi), rtol=1e-6)
    np.testing.assert_allclose(y, np_sh(np.array([[0.0, 0.0, 1.0]]))[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model_name", ["tiny_model", "synthetic_model"])
def test_form_face_matches_numpy(model_name, request):
    m = request.getfixturevalue(model_name)
    rng = np.random.default_rng(2)
    for _ in range(2):
        c = random_coeffs(rng)
        got = formation.form_face(m, c)
        want = np_form(m, c)
        for name, ref in want.items():
            val = np.asarray(getattr(got, name))
            scale = max(np.abs(ref).max(), 1.0)
            if name in ("normals", "colors"):
                # Normals of the smallest triangles (edges ~1e-3 dm) lose digits in float32, as in
                # the float32 references: 99% of vertices agree to 1e-4, all to 1e-2.
                err = np.abs(val - ref).max(axis=1) / scale
                assert np.quantile(err, 0.99) < 1e-4 and err.max() < 1e-2, (name, np.quantile(err, 0.99), err.max())
            else:
                np.testing.assert_allclose(val, ref, rtol=RTOL, atol=ATOL * scale, err_msg=name)


def test_normals_are_unit_and_face_the_camera(synthetic_model):
    f = formation.form_face(synthetic_model, Coeffs.zeros())
    np.testing.assert_allclose(np.linalg.norm(np.asarray(f.normals), axis=1), 1.0, atol=1e-5)
    # A frontal face: most normals point toward the camera (+z).
    assert float(jnp.mean(f.normals[:, 2] > 0)) > 0.9


def test_batched_equals_single_and_does_not_recompile(tiny_model):
    rng = np.random.default_rng(3)
    cb = random_coeffs(rng, (4,))
    before = formation.form_faces._cache_size()
    out = formation.form_faces(tiny_model, cb, Camera())
    for i in range(4):
        one = formation.form_face(tiny_model, jax.tree.map(lambda x: x[i], cb))
        np.testing.assert_allclose(out.colors[i], one.colors, rtol=1e-5, atol=1e-6)
    assert formation.form_faces._cache_size() == before + 1
    formation.form_faces(tiny_model, random_coeffs(rng, (4,)), Camera())
    assert formation.form_faces._cache_size() == before + 1  # same shapes: no new compile


def test_gradients_match_finite_differences(tiny_model):
    rng = np.random.default_rng(4)
    c = random_coeffs(rng)
    c64 = jax.tree.map(lambda x: np.asarray(x, np.float64), c)
    m64 = jax.tree.map(lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tiny_model)
    w = rng.normal(size=(36, 3))

    def loss(id_, exp, tex, angle, gamma, trans):
        f = formation.form_face(m64, Coeffs(id_, exp, tex, angle, gamma, trans))
        return jnp.sum(f.colors * w) + jnp.sum(jnp.sin(f.uv / 50.0)) + jnp.sum(f.landmarks) * 1e-3

    with jax.enable_x64(True):
        check_grads(loss, tuple(c64), order=1, modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-6)


def test_batched_normals_and_gradients_match_plain_vmap(synthetic_model):
    """The per-face normals under vmap (value and gather-only VJP) equal plain vmap + autodiff
    of the formula."""
    m = synthetic_model
    rng = np.random.default_rng(6)
    ids = jnp.asarray(rng.normal(size=(3, 80)), jnp.float32)
    shapes = jax.vmap(lambda i: formation.face_shape(m, i, jnp.zeros(64)))(ids)
    g = jnp.asarray(rng.normal(size=shapes.shape), jnp.float32)

    def plain(s):
        return normals_reference(s, m.tris, m.point_buf)

    mine, vjp_mine = jax.vjp(jax.vmap(lambda s: formation.face_normals(s, m.tris, m.point_buf)), shapes)
    ref, vjp_ref = jax.vjp(jax.vmap(plain), shapes)
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    (got,), (want,) = vjp_mine(g), vjp_ref(g)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    # Unbatched calls take the same formula through the custom VJP.
    one = jax.grad(lambda s: jnp.sum(formation.face_normals(s, m.tris, m.point_buf) * g[0]))(shapes[0])
    np.testing.assert_allclose(one, want[0], rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(want))))
