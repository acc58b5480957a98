"""Texture extraction on synthetic renders with known albedo (jaxface.texture).

The photos are renders of the synthetic model with known coefficients, frontal and at 30
degrees of yaw. Extraction gets the true shape, pose and light but the MEAN albedo (tex = 0):
visible texels must come back with the TRUE albedo (from the photo, de-lit), hidden ones
with the model's mean albedo.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxface import Camera, Coeffs
from jaxface.render import render_faces
from jaxface.texture import TextureConfig, extract_textures, render_textured, texture_atlas

SIZE = 128
YAW = np.deg2rad(30.0)


@pytest.fixture(scope="module")
def scene(synthetic_model):
    rng = np.random.default_rng(3)
    f32 = np.float32
    gamma = np.zeros((2, 27), f32)
    gamma[:, [1, 10, 19]] = 0.15  # some light from above, no channel saturating much
    coeffs = Coeffs(id=rng.normal(size=(2, 80)).astype(f32), exp=rng.normal(size=(2, 64)).astype(f32) * 0.5,
                    tex=rng.normal(size=(2, 80)).astype(f32), angle=np.array([[0, 0, 0], [0, YAW, 0]], f32),
                    gamma=gamma, trans=np.zeros((2, 3), f32))
    face, out = render_faces(synthetic_model, jax.tree.map(np.asarray, coeffs), Camera())
    photos = np.round(np.asarray(out.image) * 255).astype(np.uint8)
    guess = coeffs._replace(tex=np.zeros_like(coeffs.tex))
    atlas = texture_atlas(synthetic_model, SIZE)
    maps = extract_textures(synthetic_model, guess, list(photos), atlas=atlas, config=TextureConfig(size=SIZE))
    tris = np.asarray(synthetic_model.tris)[atlas.tri]

    def at_texels(per_vertex):  # f[B, V, 3] -> f[B, N, 3] by the atlas barycentrics
        return np.einsum("nk,bnkc->bnc", atlas.bary, np.asarray(per_vertex)[:, tris])

    mean_albedo = np.asarray(synthetic_model.mean_tex)[None] / 255.0  # tex = 0
    return dict(coeffs=coeffs, guess=guess, photos=photos, atlas=atlas, maps=maps,
                true_albedo=at_texels(face.albedo), true_lit=at_texels(face.colors),
                mean_albedo=at_texels(np.repeat(mean_albedo, 2, axis=0)))


def _texels(a, atlas):
    return a.reshape(a.shape[0], -1, *a.shape[3:])[:, atlas.texels]


@pytest.mark.parametrize("view", [0, 1], ids=["frontal", "yaw30"])
def test_visible_texels_recover_the_true_albedo(scene, view):
    atlas = scene["atlas"]
    got = _texels(scene["maps"].albedo, atlas)[view]
    weight = _texels(scene["maps"].visibility, atlas)[view]
    # Fully visible, and not where the photo clipped at white (nothing can recover those).
    full = (weight == 1) & (scene["true_lit"][view].max(axis=1) < 0.98)
    err = np.abs(got - scene["true_albedo"][view])[full]
    prior = np.abs(scene["mean_albedo"][view] - scene["true_albedo"][view])[full]
    print(f"view {view}: {full.mean():.0%} of texels fully visible; albedo error mean {err.mean():.4f} "
          f"p95 {np.percentile(err, 95):.4f} (0-1 units); the mean albedo would be off by {prior.mean():.4f}")
    assert full.mean() > (0.8 if view == 0 else 0.5)
    assert err.mean() < 0.006 and np.percentile(err, 95) < 0.02
    assert prior.mean() > 8 * err.mean()  # the photo, not the model, gave these texels


def test_hidden_side_is_filled_from_the_model(scene):
    atlas, maps = scene["atlas"], scene["maps"]
    weight = _texels(maps.visibility, atlas)
    u = (atlas.texels % SIZE + 0.5) / SIZE
    assert (weight[0] == 0).mean() < 0.05  # frontal: almost everything seen
    # Yaw +30 degrees turns the face's +x side (right in the map) away from the camera.
    assert (weight[1][u > 0.9] == 0).mean() > 0.8 and (weight[1][u < 0.4] > 0).mean() > 0.95
    hidden = weight[1] == 0
    np.testing.assert_allclose(_texels(maps.albedo, atlas)[1][hidden], scene["mean_albedo"][1][hidden], atol=1e-6)
    # The texture (lit colours) takes the model's shading there: mean albedo x true light.
    ratio = scene["true_lit"][1][hidden] / scene["true_albedo"][1][hidden]
    np.testing.assert_allclose(_texels(maps.texture, atlas)[1][hidden],
                               np.clip(scene["mean_albedo"][1][hidden] * ratio, 0, 1), atol=2e-3)
    # Outside the mesh the maps repeat their nearest texel (no black seams under filtering).
    outside = ~atlas.covered
    assert outside.any() and (maps.texture[:, outside].max(axis=-1) > 0.05).all()


def test_texture_from_the_original_photo(scene, synthetic_model):
    """Sampling a 2x larger photo through trans_params gives the crop's texture."""
    import cv2

    photo = cv2.resize(scene["photos"][0], (448, 448), interpolation=cv2.INTER_CUBIC)
    # [W, H, scale, tx, ty] for which the aligned crop is this photo shrunk by 2.
    trans = np.array([[448, 448, 0.5, 224, 224]], np.float64)
    one = jax.tree.map(lambda x: x[:1], scene["guess"])
    big = extract_textures(synthetic_model, one, [photo], trans, atlas=scene["atlas"], config=TextureConfig(size=SIZE),
                           batch_size=2)  # padded to the fixture's program
    w = scene["maps"].visibility[0]
    np.testing.assert_array_equal(big.visibility[0], w)
    diff = np.abs(big.albedo[0] - scene["maps"].albedo[0])[w == 1]
    assert diff.mean() < 0.01, diff.mean()


def test_textured_render_reproduces_the_photo(scene, synthetic_model):
    images, masks = render_textured(synthetic_model, scene["coeffs"], scene["maps"].texture, scene["atlas"].uv)
    assert images.shape == (2, 224, 224, 3)
    inner = cv2_erode(masks[0])
    diff = np.abs(images[0] - scene["photos"][0] / 255.0)[inner > 0]
    assert diff.mean() < 0.01, diff.mean()
    np.testing.assert_array_equal(masks[0] > 0, scene["photos"][0].max(axis=-1) > 0)  # same coverage


def cv2_erode(mask):
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8))


def test_extract_textures_rejects_bad_inputs(scene, synthetic_model):
    guess, photos, atlas = scene["guess"], scene["photos"], scene["atlas"]
    with pytest.raises(ValueError, match="uint8"):
        extract_textures(synthetic_model, guess, list(photos / 255.0), atlas=atlas, config=TextureConfig(size=SIZE))
    with pytest.raises(ValueError, match="2 faces, 1 images"):
        extract_textures(synthetic_model, guess, list(photos[:1]), atlas=atlas, config=TextureConfig(size=SIZE))
    with pytest.raises(ValueError, match="atlas has 128"):
        extract_textures(synthetic_model, guess, list(photos), atlas=atlas, config=TextureConfig(size=64))
    with pytest.raises(ValueError, match="batch axis"):
        extract_textures(synthetic_model, jax.tree.map(lambda x: x[0], guess), [photos[0]], atlas=atlas,
                         config=TextureConfig(size=SIZE))
    with pytest.raises(ValueError, match="texture size"):
        TextureConfig(size=4096)
