"""Losses against hand-derived values and an independent numpy port of the reference's batched formulas."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import Coeffs
from jaxface import losses
from jaxface.coeffs import LAYOUT

# ---- numpy versions of the PyTorch reference (batched, as in models/losses.py) ----


def np_landmark(pred, gt):
    w = np.ones(68)
    w[28:31] = 20
    w[-8:] = 20
    return np.sum(np.sum((pred - gt) ** 2, -1) * w[None]) / (pred.shape[0] * pred.shape[1])


def np_photo(a, b, mask, eps=1e-6):
    # the reference takes (B, 3, H, W) and mask (B, 1, H, W)
    a, b = np.moveaxis(a, -1, 1), np.moveaxis(b, -1, 1)
    loss = np.sqrt(eps + np.sum((a - b) ** 2, axis=1, keepdims=True)) * mask[:, None]
    return np.sum(loss) / max(np.sum(mask), 1.0)


def np_reg(c):
    creg = np.sum(c["id"] ** 2) + 0.8 * np.sum(c["exp"] ** 2) + 0.017 * np.sum(c["tex"] ** 2)
    gamma = c["gamma"].reshape(-1, 3, 9)
    return creg / c["id"].shape[0], np.mean((gamma - gamma.mean(1, keepdims=True)) ** 2)


def np_reflectance(tex, mask):
    m = mask.reshape(1, -1, 1)
    mean = np.sum(m * tex, axis=1, keepdims=True) / np.sum(m)
    return np.sum(((tex - mean) * m) ** 2) / (tex.shape[0] * np.sum(m))


def test_default_landmark_weights():
    w = losses.LANDMARK_WEIGHTS
    one_based_heavy = [29, 30, 31, *range(61, 69)]
    assert w.shape == (68,)
    assert np.all(w[np.array(one_based_heavy) - 1] == 20)
    assert np.sum(w == 1) == 68 - len(one_based_heavy)


def test_loss_weight_defaults_are_the_reference():
    w = losses.LossWeights()
    assert (w.photo, w.landmark, w.reg, w.albedo, w.gamma) == (1.92, 1.6e-3, 3e-4, 5.0, 10.0)
    assert (w.id_reg, w.exp_reg, w.tex_reg) == (1.0, 0.8, 1.7e-2)
    assert w.identity == 0.0  # needs a recognition network; the reference's 0.2 is opt-in
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.photo = 1.0


def test_landmark_loss_hand_values():
    target = jnp.zeros((68, 2))
    pred = target.at[0].set(jnp.array([3.0, 4.0]))  # weight 1, squared distance 25
    assert float(losses.landmark_loss(pred, target)) == pytest.approx(25 / 68)
    pred = target.at[29].set(jnp.array([3.0, 4.0]))  # one-based 30: weight 20
    assert float(losses.landmark_loss(pred, target)) == pytest.approx(500 / 68)
    custom = jnp.zeros(5).at[2].set(2.0)
    five = jnp.zeros((5, 2)).at[2].set(jnp.array([1.0, 1.0]))
    assert float(losses.landmark_loss(five, jnp.zeros((5, 2)), custom)) == pytest.approx(2 * 2 / 5)


def test_photometric_loss_hand_values():
    target = jnp.full((2, 2, 3), 0.5)
    rendered = target.at[0, 0].add(jnp.array([0.3, 0.4, 0.0])).at[1, 1].add(10.0)  # (1,1) is masked out
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    expected = (np.sqrt(1e-6 + 0.25) + 2 * np.sqrt(1e-6)) / 3
    assert float(losses.photometric_loss(rendered, target, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.photometric_loss(rendered, target, jnp.zeros((2, 2)))) == 0.0  # max(sum(mask), 1)


def test_regularizers_hand_values():
    ones = Coeffs(*(jnp.ones(w) for _, w in LAYOUT))
    assert float(losses.coeff_regularizer(ones)) == pytest.approx(80 + 0.8 * 64 + 0.017 * 80)
    albedo = jnp.array([[0.2] * 3, [0.6] * 3, [1.0] * 3])
    skin = jnp.array([1.0, 1.0, 0.0])  # third vertex ignored: mean 0.4, 6 deviations of 0.2
    assert float(losses.albedo_regularizer(albedo, skin)) == pytest.approx(6 * 0.04 / 2)
    assert float(losses.albedo_regularizer(jnp.full((3, 3), 0.7), skin)) == pytest.approx(0.0, abs=1e-12)
    d = 0.3
    gamma = jnp.zeros(27).at[0].set(d)  # channel 0 only: deviations 2d/3, -d/3, -d/3
    assert float(losses.lighting_regularizer(gamma)) == pytest.approx(2 * d * d / 81)
    assert float(losses.lighting_regularizer(jnp.tile(jnp.arange(9.0), 3))) == 0.0  # monochrome


def test_region_mask_hand_values(tiny_model):
    # Region = vertices 0-13 of the 6 x 6 grid: triangles with all corners there count.
    model = tiny_model.replace(front_mask_idx=jnp.arange(14, dtype=jnp.int32))
    tris = np.asarray(model.tris)
    inside = np.flatnonzero(np.all(tris < 14, axis=1))
    outside = np.flatnonzero(np.any(tris < 14, axis=1) & np.any(tris >= 14, axis=1))  # straddles the border
    assert len(inside) and len(outside)
    np.testing.assert_array_equal(model.region_triangles(), np.all(tris < 14, axis=1))
    tri_id = jnp.array([[-1, inside[0]], [outside[0], inside[-1]]], jnp.int32)
    mask = losses.region_mask(model, tri_id)
    assert mask.dtype == jnp.float32
    np.testing.assert_array_equal(mask, [[0.0, 1.0], [0.0, 1.0]])


def test_batched_losses_match_numpy_reference():
    rng = np.random.default_rng(0)
    b = 3
    pred, gt = rng.normal(size=(b, 68, 2)) * 5, rng.normal(size=(b, 68, 2)) * 5
    np.testing.assert_allclose(losses.landmark_loss(pred, gt), np_landmark(pred, gt), rtol=1e-5)

    a, t = rng.uniform(size=(b, 8, 9, 3)), rng.uniform(size=(b, 8, 9, 3))
    mask = (rng.uniform(size=(b, 8, 9)) > 0.4).astype(np.float32)
    np.testing.assert_allclose(losses.photometric_loss(a, t, mask), np_photo(a, t, mask), rtol=1e-5)

    c = {n: rng.normal(size=(b, w)) for n, w in LAYOUT}
    creg, greg = np_reg(c)
    coeffs = Coeffs(**{n: jnp.asarray(v, jnp.float32) for n, v in c.items()})
    np.testing.assert_allclose(losses.coeff_regularizer(coeffs), creg, rtol=1e-5)
    np.testing.assert_allclose(losses.lighting_regularizer(coeffs.gamma), greg, rtol=1e-5)

    tex = rng.uniform(size=(b, 50, 3))
    skin = (rng.uniform(size=50) > 0.5).astype(np.float32)
    np.testing.assert_allclose(losses.albedo_regularizer(tex, skin), np_reflectance(tex, skin), rtol=1e-5)


def test_losses_are_differentiable_and_finite_at_a_perfect_match():
    img = jnp.full((4, 4, 3), 0.3)
    g = jax.grad(lambda x: losses.photometric_loss(x, img, jnp.ones((4, 4))))(img)
    assert np.all(np.isfinite(g)) and np.allclose(g, 0.0)  # the eps keeps sqrt'(0) finite


@pytest.mark.parametrize(
    "call",
    [
        lambda: losses.landmark_loss(jnp.zeros((68, 2)), jnp.zeros((67, 2))),
        lambda: losses.landmark_loss(jnp.zeros((5, 2)), jnp.zeros((5, 2))),  # default weights need 68
        lambda: losses.photometric_loss(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 3)), jnp.zeros((4, 5))),
        lambda: losses.albedo_regularizer(jnp.zeros((10, 3)), jnp.zeros(9)),
        lambda: losses.lighting_regularizer(jnp.zeros(26)),
    ],
)
def test_bad_shapes_raise(call):
    with pytest.raises(ValueError):
        call()


def test_second_difference_hand_values():
    x = jnp.array([[0.0], [1.0], [4.0], [9.0], [10.0]])  # second differences 2, 2, -4
    valid = jnp.array([True, True, True, True, True])
    assert float(losses.second_difference(x, valid)) == pytest.approx(4 + 4 + 16)
    # A frame that is not valid removes every difference that touches it.
    assert float(losses.second_difference(x, valid.at[3].set(False))) == pytest.approx(4)
    # A straight line has none.
    line = jnp.stack([jnp.arange(6.0), 2 * jnp.arange(6.0)], axis=1)
    assert float(losses.second_difference(line, jnp.ones(6, bool))) == 0.0
