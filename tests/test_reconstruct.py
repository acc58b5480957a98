"""reconstruct(batch), outputs on disk, the CLI and the demo, on the synthetic model."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxface import align
from jaxface.cli import main
from jaxface.demo import make_photos, run
from jaxface.errors import MissingFileError
from jaxface.fit import FitConfig
from jaxface.outputs import load_mat, load_obj, read_failures_csv
from jaxface.outputs import save_outputs
from jaxface.reconstruct import ReconstructConfig, Reconstructor, bucket_size
from jaxface.render import render_faces

# One fit schedule and batch size 2 everywhere, so the whole module compiles `fit` twice
# (68- and 5-point landmarks) instead of once per test.
STEPS = 10
FAST = ReconstructConfig(method="fit", buckets=(2,), fit=FitConfig(landmark_steps=STEPS, photo_steps=STEPS))


@pytest.fixture(scope="module")
def photos(synthetic_model):
    return make_photos(synthetic_model, jax.random.key(7), 3)


@pytest.fixture(scope="module")
def recon(synthetic_model):
    return Reconstructor(model=synthetic_model, config=FAST, quiet=True)


@pytest.fixture(scope="module")
def result(recon, photos):
    images, lm68, _, _ = photos
    items = [images[0], np.zeros((5, 5), np.uint8), images[2]]
    return recon(items, [lm68[0], lm68[0], lm68[2]])


def test_bucket_size():
    assert bucket_size(1, (1, 4, 16)) == 1 and bucket_size(3, (1, 4, 16)) == 4 and bucket_size(16, (1, 4, 16)) == 16


def test_reconstruction_shapes_status_and_accuracy(result, photos, synthetic_model):
    images, _, true_lm, scene = photos
    assert result.status[0] == result.status[2] == "ok"
    assert "outside the 5x5 image" in result.status[1]  # the batch goes on
    assert result.ok.tolist() == [True, False, True]
    v = synthetic_model.num_vertices
    assert result.shape.shape == (3, v, 3) and result.vertices.dtype == np.float32
    assert result.coeffs.id.shape == (3, 80) and result.landmarks.shape == (3, 68, 2)
    assert result.crops.shape == (3, 224, 224, 3) and result.crops.dtype == np.uint8
    assert result.overlays[0].shape == images[0].shape and result.overlays[1] is None
    assert np.all(np.isnan(result.shape[1]))
    assert "SYNTHETIC" in result.model_label and result.method == "fit"
    # Landmarks mapped back to the photo land near the truth (68-point inputs with 1.5 px noise).
    err = np.linalg.norm(result.landmarks[[0, 2]] - true_lm[[0, 2]], axis=-1).mean()
    assert err < 4.0, err
    # The fitted shape is closer to the truth than the mean face.
    truth = np.asarray(scene.shapes)
    fit_err = np.linalg.norm(result.shape[[0, 2]] - truth[[0, 2]], axis=-1).mean()
    mean_err = np.linalg.norm(np.asarray(synthetic_model.mean_shape)[None] - truth, axis=-1).mean()
    assert fit_err < mean_err
    # The rendering in photo pixels covers the face where the photo has it.
    assert result.image_mask[0].sum() > 0.5 * result.mask[0].sum()


def test_outputs_round_trip(result, photos, synthetic_model, tmp_path):
    save_outputs(result, 0, tmp_path, "face", synthetic_model.tris)
    mat = load_mat(tmp_path / "face.mat")
    np.testing.assert_allclose(mat["coeff"][0], result.coeffs.to_vector()[0], rtol=1e-6)
    np.testing.assert_allclose(mat["id"][0], result.coeffs.id[0], rtol=1e-6)
    np.testing.assert_allclose(mat["lm_68p"], result.crop_landmarks[0], rtol=1e-5)
    # As the TF reference: lm_5p the detections after alignment (y down), recon_img RGBA with
    # the face mask as alpha, face_color not clipped.
    aligned = align.align_image(photos[0][0], photos[1][0])
    detections = align.five_from_68(np.stack([aligned.landmarks[:, 0], 223 - aligned.landmarks[:, 1]], 1))
    np.testing.assert_allclose(mat["lm_5p"], detections, rtol=1e-6)
    np.testing.assert_array_equal(mat["recon_img"][..., 3], result.mask[0])
    np.testing.assert_array_equal(mat["face_color"], result.colors[0] * np.float32(255))
    v, c, t = load_obj(tmp_path / "face_mesh.obj")
    np.testing.assert_allclose(v, result.vertices[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(t, np.asarray(synthetic_model.tris))
    assert (tmp_path / "face_overlay.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no result"):
        save_outputs(result, 1, tmp_path, "bad", synthetic_model.tris)


def test_same_bucket_does_not_recompile(recon, photos):
    images, lm68, _, _ = photos
    before = render_faces._cache_size()
    one = recon([images[1]], [lm68[1]])  # 1 image -> padded to bucket 2: the fixture's program
    assert one.ok.all() and render_faces._cache_size() == before


def test_prepare_then_run_and_skipping_photo_outputs(recon, photos, result, synthetic_model, tmp_path):
    """`prepare` + `run` is `__call__`; photo_outputs=False gives the same coefficients and crop
    renderings without photo-pixel maps, and save_outputs says what it needs."""
    import dataclasses

    images, lm68, _, _ = photos
    items, lms = [images[0], np.zeros((5, 5), np.uint8), images[2]], [lm68[0], lm68[0], lm68[2]]
    prepared = recon.prepare(items, lms)
    assert prepared.status[0] == "ok" and prepared.status[1] != "ok" and prepared.aligned[1] is None
    lean = Reconstructor(model=synthetic_model, config=dataclasses.replace(FAST, photo_outputs=False), quiet=True)
    bare = lean.run(prepared)
    assert bare.status == result.status
    np.testing.assert_array_equal(bare.coeffs.to_vector(), result.coeffs.to_vector())
    np.testing.assert_array_equal(bare.rendered, result.rendered)
    assert bare.overlays == (None, None, None) and bare.image_rendered == (None, None, None)
    with pytest.raises(ValueError, match="photo_outputs=True"):
        save_outputs(bare, 0, tmp_path, "a", synthetic_model.tris)


def test_rnet_without_weights_is_a_clear_error(synthetic_model, tmp_path):
    with pytest.raises(MissingFileError, match="convert-weights"):
        Reconstructor(model=synthetic_model, weights=tmp_path, config=ReconstructConfig(method="rnet"), quiet=True)


def test_cli_reconstruct_folder_resumes_and_reports(photos, tmp_path, capsys):
    from jaxface.detect import write_landmarks_txt
    from jaxface.outputs import image_key, read_manifest, save_png

    images, lm68, _, _ = photos
    src = tmp_path / "in"
    # Two photos whose names map to one result name (issue 16): both get their own results.
    # The second one's landmarks are mirrored (eyes and mouth corners swapped): a warning row.
    for name, k, order in (("a b", 0, [0, 1, 2, 3, 4]), ("a_b", 1, [1, 0, 2, 4, 3])):
        save_png(src / f"{name}.png", images[k])
        write_landmarks_txt(src / f"{name}.txt", align.five_from_68(lm68[k])[order])
    out = tmp_path / "out"
    argv = ["reconstruct", str(src), "-o", str(out), "--steps", str(STEPS), "--batch-size", "2", "--method", "fit",
            "--texture", "--texture-size", "32"]
    assert main(argv) == 0  # every photo reconstructed (one with a warning)
    assert {p.name for p in out.iterdir()} >= {"a_b.mat", "a_b_2.mat", "a_b_2_mesh.obj", "a_b_overlay.png",
                                               "manifest.csv", "failures.csv", "a_b_mesh.mtl", "a_b.glb",
                                               "a_b_texture.png", "a_b_albedo.png", "a_b_visibility.png"}
    stems = read_manifest(out)
    assert stems == {image_key(src / "a_b.png"): "a_b", image_key(src / "a b.png"): "a_b_2"}
    for name, stem in (("a b", "a_b_2"), ("a_b", "a_b")):  # each result holds its own photo's crop
        crop = align.align_image(align.load_image(src / f"{name}.png"), align.read_landmarks(src / f"{name}.txt"))
        np.testing.assert_array_equal(load_mat(out / f"{stem}.mat")["cropped_img"], crop.image)
    rows = read_failures_csv(out / "failures.csv")
    assert [(r.image.endswith("a_b.png"), r.stage) for r in rows] == [(True, "warning")]
    assert "mirrored" in rows[0].message
    assert "2 reconstructed (1 with warnings), 0 already done, 0 failed" in capsys.readouterr().out
    # The run's page: one row per photo, and the run's record.
    page = (out / "index.html").read_text()
    assert page.count('<tr id="photo-') == 2
    assert json.loads((out / "run.json").read_text())["inputs"]["a_b"] == str((src / "a_b.png").resolve())
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "notes.md").write_text("not an image")  # not listed: not an image suffix
    stamp = (out / "a_b.mat").stat().st_mtime_ns
    assert main(argv) == 1  # resumable: a_b and a_b_2 exist and are skipped; broken.jpg fails
    assert (out / "a_b.mat").stat().st_mtime_ns == stamp
    rows = read_failures_csv(out / "failures.csv")
    assert [(r.image.endswith("broken.jpg"), r.stage) for r in rows] == [(True, "reconstruct")]
    assert f"0 reconstructed, 2 already done, 1 failed -> {out}; see {out / 'failures.csv'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()  # the failure joins the page with its reason
    assert page.count('<tr id="photo-') == 3 and '<tr id="photo-broken" class="failed">' in page


def test_demo_writes_outputs_and_recovers_faces(tmp_path):
    summary = run(tmp_path, count=2, steps=STEPS, quiet=True)
    assert summary["synthetic"] and summary["succeeded"] == 2
    assert summary["mean"]["shape_error_mm"] < summary["mean"]["mean_face_error_mm"]
    assert summary["mean"]["landmark_error_px"] < 4.0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["per_image"][0]["name"] == "synthetic_00"
    for name in ("synthetic_00.mat", "synthetic_01_mesh.obj", "synthetic_00_overlay.png", "inputs/synthetic_00.txt"):
        assert (tmp_path / name).is_file(), name
    page = (tmp_path / "index.html").read_text()
    assert page.count('<button type="button" class="view"') == 2 and "synthetic-seed0" in page


def test_auto_never_uses_weights_made_for_another_model(synthetic_model, tmp_path, capsys):
    from jaxface.rnet import RNetConfig, init_rnet, save_rnet

    # Weights without the "synthetic" mark are taken as trained for the Basel model.
    save_rnet(init_rnet(jax.random.key(0), RNetConfig()), RNetConfig(), tmp_path)
    recon = Reconstructor(model=synthetic_model, weights=tmp_path, config=ReconstructConfig(method="auto"))
    assert recon.method == "fit" and recon.rnet is not None
    assert "trained for the Basel Face Model" in capsys.readouterr().err


def test_weights_trained_for_the_synthetic_model_round_trip(synthetic_model, tmp_path, capsys):
    from jaxface.data import SyntheticSource
    from jaxface.rnet import RNetConfig, init_rnet, save_rnet
    from jaxface.rnet.checkpoint import trained_for_synthetic, weights_provenance
    from jaxface.train import provenance

    # The source `jaxface train --synthetic` exports its weights with.
    source = provenance(SyntheticSource(synthetic_model, 2), synthetic_model, None)
    save_rnet(init_rnet(jax.random.key(0), RNetConfig()), RNetConfig(), tmp_path, source=source)
    assert weights_provenance(tmp_path) == json.loads(json.dumps(source)) and trained_for_synthetic(source)
    capsys.readouterr()
    same = Reconstructor(model=synthetic_model, weights=tmp_path, config=ReconstructConfig(method="auto"))
    assert same.method == "rnet" and "jaxface:" not in capsys.readouterr().err
    assert same.rnet[1].dtype == "float32"
    half = Reconstructor(model=synthetic_model, weights=tmp_path, config=ReconstructConfig(rnet_dtype="bfloat16"))
    assert half.rnet[1].dtype == "bfloat16" and half.rnet[1].variant == same.rnet[1].variant
    with pytest.raises(ValueError, match="rnet_dtype must be"):
        ReconstructConfig(rnet_dtype="float16")
    basel = synthetic_model.replace(synthetic=False)  # stands in for the Basel model
    auto = Reconstructor(model=basel, weights=tmp_path, config=ReconstructConfig(method="auto"))
    assert auto.method == "fit"
    err = capsys.readouterr().err
    assert "trained for the SYNTHETIC model, not for synthetic-seed0" in err and "using gradient fitting" in err
    explicit = Reconstructor(model=basel, weights=tmp_path, config=ReconstructConfig(method="rnet"))
    assert explicit.method == "rnet" and "warning: the R-Net weights" in capsys.readouterr().err
    # Runs from before "face_model_synthetic" marked such weights "synthetic"; converted ones carry neither.
    assert trained_for_synthetic({"synthetic": True}) and not trained_for_synthetic({"format": "pytorch"})
    meta = json.loads((tmp_path / "rnet.json").read_text())
    meta["source"]["face_model_synthetic"] = "yes"
    (tmp_path / "rnet.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"rnet\.json: field 'source\.face_model_synthetic' must be true or false"):
        weights_provenance(tmp_path)
    (tmp_path / "rnet.json").write_text(json.dumps({**meta, "source": ["photos"]}))
    with pytest.raises(ValueError, match=r"rnet\.json: field 'source' must be an object, got list"):
        weights_provenance(tmp_path)

