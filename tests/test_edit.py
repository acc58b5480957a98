"""Expression edits (jaxface.edit): neutralize, transfer_expression, `jaxface edit` on .mat files."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.io import loadmat, savemat

import jaxface
from jaxface import Camera, Coeffs
from jaxface.cli import main
from jaxface.coeffs import LAYOUT
from jaxface.conventions import flip_y
from jaxface.outputs import load_mat, save_mat
from jaxface.render import render_faces


def _coeffs(seed: int, batch: int = 2) -> Coeffs:
    rng = np.random.default_rng(seed)
    c = Coeffs(**{name: (rng.normal(size=(batch, w)) * 0.5).astype(np.float32) for name, w in LAYOUT})
    return c._replace(angle=c.angle * 0.3, trans=c.trans * 0.1, gamma=c.gamma * 0.2)


def _shapes(model, coeffs):
    """Canonical and posed shapes f32[B, V, 3] (the program other tests compile for batch 2)."""
    face, _ = render_faces(model, jax.tree.map(np.asarray, coeffs), Camera())
    return np.asarray(face.shape), np.asarray(face.vertices)


def test_transfer_recovers_the_source_expression_offsets(synthetic_model):
    source, target = _coeffs(0), _coeffs(1)
    mixed = jaxface.transfer_expression(source, target)
    for name in ("id", "tex", "angle", "gamma", "trans"):
        np.testing.assert_array_equal(getattr(mixed, name), getattr(target, name))
    np.testing.assert_array_equal(mixed.exp, source.exp)
    shape_mixed, _ = _shapes(synthetic_model, mixed)
    shape_target_neutral, _ = _shapes(synthetic_model, jaxface.neutralize(target))
    shape_source, _ = _shapes(synthetic_model, source)
    shape_source_neutral, _ = _shapes(synthetic_model, jaxface.neutralize(source))
    offsets = shape_mixed - shape_target_neutral
    expected = np.einsum("vck,bk->bvc", np.asarray(synthetic_model.exp_base, np.float64), source.exp)
    assert np.abs(expected).max() > 0.01  # millimetres of motion, not a vacuous comparison
    np.testing.assert_allclose(offsets, shape_source - shape_source_neutral, atol=2e-6)  # float32 rounding
    np.testing.assert_allclose(offsets, expected, atol=2e-6)


def test_neutralize_and_transfer_inputs(synthetic_model, tmp_path):
    c = _coeffs(2)
    neutral = jaxface.neutralize(c)
    assert not neutral.exp.any() and np.array_equal(neutral.id, c.id) and np.array_equal(neutral.gamma, c.gamma)
    # One source face goes to every target face; mismatched batches are refused.
    one = jax.tree.map(lambda x: x[:1], _coeffs(3))
    np.testing.assert_array_equal(jaxface.transfer_expression(one, c).exp, np.repeat(one.exp, 2, axis=0))
    with pytest.raises(ValueError, match="one source face"):
        jaxface.transfer_expression(_coeffs(3, batch=3), c)
    # .mat paths and load_mat dicts of either layout.
    savemat(tmp_path / "torch.mat", {name: np.asarray(getattr(one, name)) for name, _ in LAYOUT})
    np.testing.assert_array_equal(jaxface.neutralize(tmp_path / "torch.mat").id, one.id)
    np.testing.assert_array_equal(jaxface.transfer_expression(load_mat(tmp_path / "torch.mat"), c).exp[1], one.exp[0])
    with pytest.raises(TypeError, match="Coeffs"):
        jaxface.neutralize(np.zeros(257))


@pytest.fixture(scope="module")
def results(synthetic_model, tmp_path_factory):
    """A TF-layout result (with crop and lm_5p) and a PyTorch-layout one (coefficients + lm68)."""
    folder = tmp_path_factory.mktemp("results")
    target, source = jax.tree.map(lambda x: x[:1], _coeffs(4)), jax.tree.map(lambda x: x[:1], _coeffs(5))
    both = jax.tree.map(lambda a, b: np.concatenate([a, b]), target, source)
    face, out = render_faces(synthetic_model, both, Camera())
    crop = np.round(np.asarray(out.image[0]) * 255).astype(np.uint8)
    lm5 = np.random.default_rng(6).uniform(60, 160, (5, 2)).astype(np.float32)
    save_mat(folder / "tf.mat", coeffs=target, cropped_img=crop, recon_img=np.asarray(out.image[0]),
             face_shape=np.asarray(face.vertices[0]), face_texture=np.asarray(face.albedo[0]),
             face_color=np.asarray(face.colors[0]), lm_68p=flip_y(np.asarray(face.landmarks[0])), lm_5p=lm5)
    savemat(folder / "torch.mat", {name: np.asarray(getattr(source, name)) for name, _ in LAYOUT}
            | {"lm68": flip_y(np.asarray(face.landmarks[1]))[None]})
    return folder, target, source, crop, lm5


def test_edit_cli_transfers_between_layouts(results, synthetic_model, tmp_path, capsys):
    folder, target, source, crop, lm5 = results
    out = tmp_path / "out"
    assert main(["edit", str(folder / "tf.mat"), "--expression-from", str(folder / "torch.mat"), "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err  # the file's face_shape is this model's
    assert {p.name for p in out.iterdir()} == {"tf.mat", "tf_mesh.obj", "tf_overlay.png"}
    mat = load_mat(out / "tf.mat")
    mixed = jaxface.transfer_expression(source, target)
    np.testing.assert_array_equal(mat["coeff"], mixed.to_vector())
    face, _ = render_faces(synthetic_model, jax.tree.map(lambda a: np.concatenate([a, a]), mixed), Camera())
    np.testing.assert_allclose(mat["face_shape"], face.vertices[0], atol=1e-6)
    # lm_68p as face_decoder.py stores it: x, 223 - v of the projected keypoints (y down).
    np.testing.assert_allclose(mat["lm_68p"], np.asarray(face.landmarks[0]) * [1, -1] + [0, 223], atol=1e-4)
    np.testing.assert_array_equal(mat["cropped_img"], crop)  # the photo's crop and detections are kept
    np.testing.assert_array_equal(mat["lm_5p"], lm5)
    assert mat["recon_img"].shape == (224, 224, 4)
    # A result made with another model: its face_shape disagrees, and the edit says so.
    raw = loadmat(folder / "tf.mat")
    raw["face_shape"] = raw["face_shape"] + np.float32(0.01)
    savemat(tmp_path / "other.mat", {k: v for k, v in raw.items() if not k.startswith("__")})
    assert main(["edit", str(tmp_path / "other.mat"), "--neutral", "-o", str(out)]) == 0
    assert "was not made with synthetic-seed0" in capsys.readouterr().err


def test_edit_cli_neutral_on_pytorch_layout_and_errors(results, tmp_path, capsys):
    folder, _, source, _, _ = results
    out = tmp_path / "out"
    assert main(["edit", str(folder / "torch.mat"), "--neutral", "-o", str(out)]) == 0
    mat = load_mat(out / "torch.mat")
    assert not mat["coeff"][0, 80:144].any() and np.array_equal(mat["id"], source.id)
    assert "cropped_img" not in mat and "lm_5p" not in mat  # nothing invented for the PyTorch layout
    assert (out / "torch_mesh.obj").is_file() and (out / "torch_overlay.png").is_file()
    # Editing into the input's folder would overwrite it; a broken file fails alone (exit 1).
    (folder / "broken.mat").write_bytes(b"not a mat file at all")
    assert main(["edit", str(folder / "torch.mat"), str(folder / "broken.mat"), "--neutral", "-o", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite it" in err and "broken.mat is not a readable MATLAB" in err
    with pytest.raises(SystemExit):  # argparse: one edit at a time
        main(["edit", str(folder / "tf.mat"), "--neutral", "--expression-from", "x.mat", "-o", str(tmp_path)])


def test_edit_cli_with_texture(results, tmp_path):
    pytest.importorskip("trimesh")
    folder, target, _, _, _ = results
    out = tmp_path / "out"
    assert main(["edit", str(folder / "tf.mat"), "--neutral", "--texture", "--texture-size", "64", "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"tf.mat", "tf_mesh.obj", "tf_mesh.mtl", "tf.glb", "tf_overlay.png", "tf_texture.png",
                     "tf_albedo.png", "tf_visibility.png"}
    import trimesh

    back = trimesh.load(out / "tf_mesh.obj", process=False)
    np.testing.assert_allclose(back.vertices, load_mat(out / "tf.mat")["face_shape"], atol=1e-6)  # the edited mesh
    assert main(["edit", str(folder / "torch.mat"), "--neutral", "--texture", "-o", str(tmp_path / "o2")]) == 1
    assert not (tmp_path / "o2" / "torch.mat").exists()  # refused before writing anything
