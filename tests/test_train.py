"""Training: data pipeline, supervised/weak steps, identity plug, checkpoints, resume, sharding.

R-Net is a full ResNet-50 at 224x224 (its input size is fixed), so every test uses batch 2
and a few steps, and all supervised steps share one `StepSpec` and placement so they share
one compile. The 2-device test runs in a subprocess (the XLA flag must precede jax's init).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.align import align_image, load_image, read_landmarks
from jaxface.data import AugmentConfig, PhotoDataset, SyntheticSource, find_samples, prefetch, to_device
from jaxface.rnet import RNetConfig, init_rnet, load_rnet
from jaxface.rnet.checkpoint import trained_for_synthetic, weights_provenance
from jaxface.train import (IdentityLoss, TrainConfig, batch_sharding, checkpoint_manager, coefficient_weights,
                           data_mesh, identity_loss, init_state, make_spec, provenance, replicate, restore_checkpoint,
                           save_checkpoint, train, train_cli, train_step, TrainState)

IMAGES = Path(__file__).parent / "data" / "images"
B = 2
SUPERVISED = TrainConfig(steps=4, batch_size=B, supervised=True, checkpoint_every=2, log_every=1, val_images=0)


@pytest.fixture(scope="module")
def model():
    from jaxface.model.synthetic import synthetic_face_model

    return synthetic_face_model(0, cache_dir=os.environ.get("JAXFACE_CACHE"))


@pytest.fixture(scope="module")
def mesh1():
    return data_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def scene(model):
    return SyntheticSource(model, B, seed=0).batch(0)


def _leaves_close(a, b, atol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    worst = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))
    return worst <= atol


# ----------------------------------------------------------------------------- data

def test_photo_pipeline_aligns_and_is_deterministic():
    plain = PhotoDataset(IMAGES, batch_size=4, seed=3, augment=AugmentConfig.none())
    assert len(plain) == 8 and plain.num_points == 5
    b0 = plain.batch(0)
    assert b0.images.shape == (4, 224, 224, 3) and b0.images.dtype == np.uint8
    assert b0.landmarks.shape == (4, 5, 2) and b0.coeffs is None
    assert sorted(np.r_[plain.indices(0), plain.indices(1)].tolist()) == list(range(8))  # one epoch covers all
    # Unaugmented crops are exactly preprocessing's, landmarks flipped to top-down rows.
    i = int(plain.indices(0)[0])
    image_path, lm_path = plain.samples[i]
    ref = align_image(load_image(image_path), read_landmarks(lm_path))
    np.testing.assert_array_equal(b0.images[0], ref.image)
    np.testing.assert_allclose(b0.landmarks[0, :, 0], ref.landmarks[:, 0], atol=1e-4)
    np.testing.assert_allclose(b0.landmarks[0, :, 1], 223 - ref.landmarks[:, 1], atol=1e-4)

    aug = PhotoDataset(IMAGES, batch_size=4, seed=3)
    a1, a2 = aug.batch(5), PhotoDataset(IMAGES, batch_size=4, seed=3).batch(5)
    np.testing.assert_array_equal(a1.images, a2.images)
    np.testing.assert_array_equal(a1.landmarks, a2.landmarks)
    assert not np.array_equal(a1.images, plain.batch(5).images)
    assert np.all((a1.landmarks > 20) & (a1.landmarks < 204))  # faces stay well inside the crop
    assert not np.array_equal(PhotoDataset(IMAGES, 4, seed=4).indices(0), plain.indices(0))

    streamed = list(prefetch(aug.batch, 3, 6, depth=2))
    assert [s for s, _ in streamed] == [3, 4, 5]
    np.testing.assert_array_equal(streamed[-1][1].images, a1.images)


def test_prefetch_reraises_and_missing_landmarks(tmp_path):
    def bad(step):
        raise ValueError(f"broken sample at {step}")

    with pytest.raises(ValueError, match="broken sample at 0"):
        list(prefetch(bad, 0, 3))
    (tmp_path / "a.jpg").write_bytes((IMAGES / "000002.jpg").read_bytes())
    with pytest.raises(FileNotFoundError, match="no landmark file.*jaxface detect"):
        find_samples(tmp_path)


def test_coefficient_weights_are_inverse_prior_variances():
    from jaxface.synth_data import SceneConfig, sample_coeffs

    w = coefficient_weights(SceneConfig())
    c = np.asarray(jax.jit(sample_coeffs, static_argnums=1)(jax.random.key(0), 4000).to_vector())
    normalized = np.var(c, axis=0) * w
    assert normalized.shape == (257,) and np.all(np.abs(normalized - 1) < 0.15)


# ----------------------------------------------------------------------------- steps

def test_supervised_loss_drops_on_a_fixed_batch(model, mesh1, scene):
    spec = make_spec(SUPERVISED, RNetConfig())
    state = replicate(init_state(init_rnet(jax.random.key(0)), spec), mesh1)
    batch, placed = to_device(scene, batch_sharding(mesh1)), replicate(model, mesh1)
    losses = []
    for _ in range(8):
        state, metrics = train_step(state, batch, placed, spec)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 8 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses  # measured 0.87 -> 0.30 in 8 steps


def test_identity_plug_and_weak_step(model, mesh1):
    rng = np.random.default_rng(0)
    proj = jnp.asarray(rng.normal(size=(8 * 8 * 3, 16)), jnp.float32)

    def tiny_recognizer(variables, images, landmarks):  # stand-in network: pool to 8x8, random projection
        pooled = jax.image.resize(images, (images.shape[0], 8, 8, 3), "linear")
        return jnp.tanh(pooled.reshape(images.shape[0], -1) @ variables)

    photos = jnp.asarray(rng.uniform(size=(B, 224, 224, 3)), jnp.float32)
    lm = jnp.zeros((B, 5, 2))
    assert float(identity_loss(tiny_recognizer, proj, photos, photos, lm)) == pytest.approx(0.0, abs=1e-6)
    grad = jax.grad(lambda r: identity_loss(tiny_recognizer, proj, r, photos, lm))(photos[::-1])
    assert float(jnp.abs(grad).sum()) > 0

    config = TrainConfig(batch_size=B)
    spec = make_spec(config, RNetConfig(), identity=IdentityLoss(tiny_recognizer, weight=0.2))
    state = replicate(init_state(init_rnet(jax.random.key(1)), spec), mesh1)
    batch = to_device(PhotoDataset(IMAGES, B, seed=0).batch(0), batch_sharding(mesh1))
    new, metrics = train_step(state, batch, replicate(model, mesh1), spec, replicate(proj, mesh1))
    values = {k: float(v) for k, v in metrics.items()}
    assert set(values) == {"loss", "photo", "landmark", "reg", "albedo", "gamma", "identity"}
    assert all(np.isfinite(v) for v in values.values()) and values["identity"] > 0 and values["photo"] > 0
    head = np.asarray(new.params["head"]["kernel"])
    assert np.abs(head).max() > 0  # zero-initialised heads moved
    with pytest.raises(ValueError, match="IdentityLoss"):
        from jaxface.losses import LossWeights

        make_spec(TrainConfig(weights=LossWeights(identity=0.2)), RNetConfig())


# ----------------------------------------------------------------------------- checkpoints / resume

def test_checkpoint_roundtrip_and_max_to_keep(tmp_path, mesh1):
    spec = make_spec(SUPERVISED, RNetConfig())
    state = replicate(init_state(init_rnet(jax.random.key(2)), spec), mesh1)
    state = state._replace(step=jnp.asarray(7, jnp.int32), params=jax.tree.map(lambda p: p + 0.5, state.params))
    save_checkpoint(checkpoint_manager(tmp_path / "full"), state, {"position": 14, "seed": 0})
    restored, meta = restore_checkpoint(checkpoint_manager(tmp_path / "full"), jax.eval_shape(lambda: state))
    assert int(restored.step) == 7 and meta == {"position": 14, "seed": 0}
    assert jax.tree.structure(restored) == jax.tree.structure(state) and _leaves_close(restored, state)

    manager = checkpoint_manager(tmp_path / "small", max_to_keep=2)
    small = TrainState(jnp.zeros((), jnp.int32), {"w": jnp.ones(3)}, {}, ())
    for step in (1, 2, 3):
        save_checkpoint(manager, small._replace(step=jnp.asarray(step, jnp.int32)), {"position": step})
    assert manager.all_steps() == [2, 3]


def test_resume_matches_uninterrupted_run_via_cli(tmp_path, model, mesh1, capsys, monkeypatch):
    quiet = lambda msg: None  # noqa: E731
    once = dataclasses.replace(SUPERVISED, checkpoint_every=4)  # one checkpoint: only the weights are compared
    full = train(once, model, SyntheticSource(model, B, seed=0), tmp_path / "full", devices=mesh1.devices.ravel(),
                 log=quiet)
    parts = tmp_path / "parts"
    args = ["--synthetic", "--out", str(parts), "--batch-size", str(B), "--checkpoint-every", "2",
            "--val-images", "0", "--log-every", "1"]
    assert train_cli(args + ["--steps", "2"]) == 0
    assert "step 2/2 loss" in capsys.readouterr().out  # no terminal: log lines, no bar
    with pytest.raises(ValueError, match="--resume"):
        train_cli(args + ["--steps", "4"])
    assert train_cli(args + ["--steps", "4", "--resume"]) == 0
    variables, config = load_rnet(parts / "rnet")
    assert config == RNetConfig()
    assert _leaves_close(variables, jax.device_get(full.state.variables), atol=1e-6)
    meta = weights_provenance(parts / "rnet")
    assert meta["synthetic"] is True and "SYNTHETIC" in meta["warning"] and meta["steps"] == 4
    assert meta["trained_on"] == "synthetic renders" and trained_for_synthetic(meta)
    rows = (parts / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,split,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    record = (parts / "train.json").read_text()
    segments = json.loads(record)["segments"]
    assert [(s["start_step"], s["end_step"], s["steps"]) for s in segments] == [(0, 2, 2), (2, 4, 4)]
    assert all(s["finished"] for s in segments) and segments[0]["settings"] == segments[1]["settings"]
    assert segments[0]["settings"]["seed"] == 0 and segments[0]["settings"]["batch_size"] == B
    assert "overridden" not in segments[1]

    # At --steps already: said, and neither train.json nor metrics.csv is rewritten.
    capsys.readouterr()
    assert train_cli(args + ["--steps", "3", "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().out
    assert (parts / "train.json").read_text() == record and len((parts / "metrics.csv").read_text().splitlines()) == 5
    # Other settings are refused (before any array is read) unless overridden.
    resume6 = dataclasses.replace(SUPERVISED, steps=6)
    for changed, match in ((dict(learning_rate=2e-4), "learning_rate 0.0001 -> 0.0002"), (dict(seed=1), "seed 0 -> 1")):
        source = SyntheticSource(model, B, seed=changed.get("seed", 0))
        with pytest.raises(ValueError, match=match + ".*--override"):
            train(dataclasses.replace(resume6, **changed), model, source, parts, resume=True,
                  devices=mesh1.devices.ravel(), log=quiet)
    assert (parts / "train.json").read_text() == record
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the bar instead of log lines
    assert train_cli(args + ["--steps", "5", "--resume", "--seed", "1", "--override"]) == 0
    out, err = capsys.readouterr()
    assert "step 5/5" not in out and "overriding seed 0 -> 1" in out
    assert "5/5" in err and "s/step" in err and "img/s" in err and "loss" in err and "coeffs" in err
    last = json.loads((parts / "train.json").read_text())["segments"][-1]
    assert (last["start_step"], last["end_step"], last["settings"]["seed"]) == (4, 5, 1)
    assert last["overridden"]["seed"] == {"was": 0, "now": 1} and set(last["overridden"]) == {"seed", "data"}


def test_run_checks_precede_the_run_folder(tmp_path, model):
    run = tmp_path / "a" / "run"
    with pytest.raises(ValueError, match="batches of 2, the config says 4"):
        train(TrainConfig(batch_size=4, supervised=True), model, SyntheticSource(model, B), run)
    with pytest.raises(ValueError, match="supervised training needs synthetic scenes"):
        train(TrainConfig(batch_size=B, supervised=True), model.replace(synthetic=False), PhotoDataset(IMAGES, B), run)
    with pytest.raises(ValueError, match="coefficients are of synthetic-seed0.*training uses other"):
        train(TrainConfig(batch_size=B, supervised=True), model.replace(name="other"), SyntheticSource(model, B), run)
    # Photos through a synthetic model: refused by what the model is, whatever folder it came from.
    with pytest.raises(ValueError, match="photos needs the Basel Face Model.*SYNTHETIC"):
        train(TrainConfig(batch_size=B), model, PhotoDataset(IMAGES, B), run)
    assert not (tmp_path / "a").exists()
    photos = provenance(PhotoDataset(IMAGES, B), model.replace(synthetic=False), None)
    assert photos["trained_on"] == "photos" and photos["synthetic"] is False and not trained_for_synthetic(photos)
    # Synthetic renders of a (here: relabelled) Basel model: flagged, yet weights for that model.
    renders = provenance(SyntheticSource(model.replace(synthetic=False), B), model.replace(synthetic=False), None)
    assert renders["trained_on"] == "synthetic renders" and renders["synthetic"] is True
    assert not trained_for_synthetic(renders)
    assert trained_for_synthetic(provenance(SyntheticSource(model, B), model, None))


def test_cli_refuses_photos_without_the_basel_model(tmp_path, monkeypatch, capsys, synthetic_dir):
    monkeypatch.setenv("JAXFACE_BFM_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Basel Face Model.*--synthetic"):
        train_cli(["--data", str(IMAGES), "--out", str(tmp_path / "run")])
    # --bfm at the synthetic model's own files: still the synthetic model, still refused.
    with pytest.raises(ValueError, match="photos needs the Basel Face Model, but the face model is synthetic"):
        train_cli(["--data", str(IMAGES), "--bfm", str(synthetic_dir), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:
        train_cli(["--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0 and "--resume" in help_text and "--override" in help_text


# ----------------------------------------------------------------------------- sharding

SHARDED_CHECK = textwrap.dedent("""
    import os, sys, numpy as np, jax
    from jaxface.data import Batch, SyntheticSource, to_device
    from jaxface.model.synthetic import synthetic_face_model
    from jaxface.rnet import RNetConfig, init_rnet
    from jaxface.train import (TrainConfig, batch_sharding, data_mesh, init_state, make_spec, replicate, train,
                               train_step)

    assert jax.device_count() == 2, jax.devices()
    ref = np.load(sys.argv[1])
    mesh = data_mesh()
    spec = make_spec(TrainConfig(batch_size=2, supervised=True), RNetConfig())
    model = synthetic_face_model(0, cache_dir=os.environ.get("JAXFACE_CACHE"))
    odd = os.path.join(os.path.dirname(sys.argv[1]), "odd")  # a batch of 3 on 2 devices: refused, no folder
    try:
        train(TrainConfig(batch_size=3, supervised=True), model, SyntheticSource(model, 3), odd)
        raise AssertionError("batch 3 on 2 devices was accepted")
    except ValueError as e:
        assert "does not split over the 2 devices" in str(e) and not os.path.exists(odd), e
    model = replicate(model, mesh)
    state = replicate(init_state(init_rnet(jax.random.key(0)), spec), mesh)
    batch = to_device(Batch(ref["images"], ref["landmarks"], ref["coeffs"]), batch_sharding(mesh))
    assert [s.data.shape[0] for s in batch.images.addressable_shards] == [1, 1]

    def compare(tree, prefix, tol=1e-5):
        # (max |diff|, elements off by more than tol (1 + |ref|), elements)
        pairs = [(np.asarray(x), ref[f"{prefix}{i}"]) for i, x in enumerate(jax.tree.leaves(tree))]
        off = sum(int(np.sum(np.abs(a - b) > tol * (1 + np.abs(b)))) for a, b in pairs)
        return max(float(np.max(np.abs(a - b))) for a, b in pairs), off, sum(b.size for _, b in pairs)

    state, m1 = train_step(state, batch, model, spec)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
    step1 = compare(state.variables, "s1_")
    state, m2 = train_step(state, batch, model, spec)
    stats2, params2 = compare(state.batch_stats, "bs2_", 1e-4), compare(state.params, "p2_")
    print("step-1 variables", step1, "step-2 batch stats", stats2, "step-2 params", params2)
    np.testing.assert_allclose(float(m1["loss"]), ref["losses"][0], rtol=1e-5)
    # Step 2 sees step-1 params in which Adam's lr * g / |g| flipped a few tiny gradients: 1e-4.
    np.testing.assert_allclose(float(m2["loss"]), ref["losses"][1], rtol=1e-4)
    assert stats2[1] == 0, stats2
    assert step1[0] <= 2.1 * spec.learning_rate and step1[1] <= 1e-5 * step1[2], step1
""")


@pytest.mark.slow
def test_sharded_step_matches_unsharded(tmp_path, model, mesh1, scene):
    """2 fake CPU devices vs 1, two steps. Losses agree to 1e-5 (step 1) and 1e-4 (step 2,
    measured 1.1e-5) relative; variables after
    step 1 to 1e-5 except at most 1e-5 of the elements (measured 2 of 24M); BatchNorm running
    statistics after step 2 to 1e-4 (measured max 5.7e-5: flax's E[x^2] - E[x]^2 variance
    amplifies the per-device convolutions' rounding). Parameters after step 2 are only
    printed: Adam's early updates are lr * g / |g|, so the backbone's first, mostly tiny
    gradients (zero-initialised heads block them at step 1) flip sign under a different
    reduction order (measured 0.55 % of elements off by up to 2 lr)."""
    spec = make_spec(SUPERVISED, RNetConfig())
    state = replicate(init_state(init_rnet(jax.random.key(0)), spec), mesh1)
    batch, placed = to_device(scene, batch_sharding(mesh1)), replicate(model, mesh1)
    state, m1 = train_step(state, batch, placed, spec)
    ref = {f"s1_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.variables))}
    state, m2 = train_step(state, batch, placed, spec)
    ref.update({f"bs2_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.batch_stats))})
    ref.update({f"p2_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))})
    np.savez(tmp_path / "ref.npz", images=scene.images, landmarks=scene.landmarks, coeffs=scene.coeffs,
             losses=np.asarray([float(m1["loss"]), float(m2["loss"])]), **ref)
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHECK, str(tmp_path / "ref.npz")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
