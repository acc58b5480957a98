"""BFM loaders: conversion parity with a from-scratch numpy conversion, file errors, the synthetic model."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import scipy.io as sio

from jaxface.errors import MissingFileError, ModelFileError
from jaxface.model import bfm
from jaxface.model.synthetic import synthetic_face_model

N_FRONT = 35709


def numpy_conversion(folder):
    """The SPEC recipe written independently: explicit per-axis index arithmetic, float64 EVs."""
    raw = sio.loadmat(folder / "01_MorphableModel.mat")
    with open(folder / "Exp_Pca.bin", "rb") as f:
        (n,) = struct.unpack("<i", f.read(4))
        data = np.frombuffer(f.read(), dtype=np.float32)
    exp_pc = data[3 * 53215 :].reshape(n, 3 * 53215).T
    std_exp = np.array([float(x) for x in (folder / "std_exp.txt").read_text().split()])
    front = sio.loadmat(folder / "BFM_front_idx.mat")["idx"][:, 0].astype(np.int64) - 1
    trim = sio.loadmat(folder / "BFM_exp_idx.mat")["trimIndex"][:, 0].astype(np.int64) - 1
    sel = trim[front]
    rows = lambda verts: (3 * verts[:, None] + np.arange(3)[None]).reshape(-1)  # xyz interleaved rows
    return {
        "meanshape": raw["shapeMU"][rows(sel), 0] / 1e5,
        "meantex": raw["texMU"][rows(sel), 0],
        "idBase": (raw["shapePC"][:, :80] * raw["shapeEV"][:80, 0])[rows(sel)] / 1e5,
        "exBase": (exp_pc[:, :64] * std_exp[:64])[rows(front)] / 1e5,
        "texBase": (raw["texPC"][:, :80] * raw["texEV"][:80, 0])[rows(sel)],
    }


def test_conversion_matches_numpy_recipe(synthetic_dir):
    ours = sio.loadmat(synthetic_dir / "BFM_model_front.mat")
    ref = numpy_conversion(synthetic_dir)
    for key, want in ref.items():
        got = ours[key].reshape(want.shape)
        # Same float operations in a different order: agreement to float32 rounding.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(), err_msg=key)
    assert ours["idBase"].shape == (3 * N_FRONT, 80) and ours["exBase"].shape == (3 * N_FRONT, 64)
    # The PyTorch reference's key layout, index files passed through unchanged (one-based).
    info = sio.loadmat(bfm.paths.index_file("facemodel_info.mat"))
    for key in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask"):
        np.testing.assert_array_equal(ours[key], info[key], err_msg=key)


def test_conversion_is_deterministic_bitwise(synthetic_dir, tmp_path):
    again = bfm.convert_bfm09(synthetic_dir, tmp_path / "again.mat")
    first = sio.loadmat(synthetic_dir / "BFM_model_front.mat")
    for key in ("meanshape", "idBase", "exBase", "texBase", "meantex"):
        assert np.array_equal(again[key], first[key]), key


def test_loaded_model_recentred_zero_based_and_labelled(synthetic_model):
    m = synthetic_model
    assert m.synthetic and "SYNTHETIC" in m.label
    assert m.mean_shape.shape == (N_FRONT, 3) and m.id_base.shape == (N_FRONT, 3, 80)
    assert m.exp_base.shape == (N_FRONT, 3, 64) and m.tex_base.shape == (N_FRONT, 3, 80)
    assert m.tris.shape == (70789, 3) and int(m.tris.min()) == 0 and int(m.tris.max()) == N_FRONT - 1
    assert int(m.point_buf.max()) == 70789  # the zero-normal pad
    assert m.keypoints.shape == (68,)
    np.testing.assert_allclose(np.asarray(m.mean_shape).mean(0), 0.0, atol=1e-5)
    for leaf in (m.mean_shape, m.id_base, m.tex_base):
        assert leaf.dtype == np.float32
    # Realistic scales: face ~15 cm wide (1.5 dm), albedo in 0-255.
    width = float(m.mean_shape[:, 0].max() - m.mean_shape[:, 0].min())
    assert 1.2 < width < 2.0
    assert 60 < float(m.mean_tex.mean()) < 220


def test_synthetic_generation_is_deterministic(synthetic_model, tmp_path):
    again = synthetic_face_model(seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(again.id_base), np.asarray(synthetic_model.id_base))
    other = sio.whosmat(str(next(tmp_path.iterdir()) / "01_MorphableModel.mat"))
    assert {"shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", bfm.SYNTHETIC_KEY} <= {n for n, *_ in other}


def test_load_face_model_converts_and_caches(synthetic_dir, tmp_path):
    for name in ("01_MorphableModel.mat", "Exp_Pca.bin"):
        (tmp_path / name).symlink_to(synthetic_dir / name)
    assert bfm.bfm_available(tmp_path)
    m = bfm.load_face_model(tmp_path)  # index files come from the repo's BFM/
    assert (tmp_path / "BFM_model_front.mat").is_file() and m.synthetic


def test_missing_files_name_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(MissingFileError, match="01_MorphableModel.mat.*Exp_Pca.bin.*faces.dmi.unibas.ch"):
        bfm.load_face_model(tmp_path)
    with pytest.raises(MissingFileError, match="BFM_model_front.mat.*convert-bfm"):
        bfm.load_front_model(tmp_path / "BFM_model_front.mat")
    assert not bfm.bfm_available(tmp_path)


def test_corrupt_and_wrong_files_are_explained(synthetic_dir, tmp_path):
    (tmp_path / "01_MorphableModel.mat").write_bytes(b"not a mat file" * 100)
    with pytest.raises(ModelFileError, match="not a readable MATLAB"):
        bfm.read_morphable_model(tmp_path / "01_MorphableModel.mat")
    sio.savemat(tmp_path / "wrong.mat", {"shapeMU": np.zeros((160470, 1), np.float32)})
    with pytest.raises(ModelFileError, match="no variable 'shapePC'"):
        bfm.read_morphable_model(tmp_path / "wrong.mat")
    sio.savemat(tmp_path / "shape.mat", {k: np.zeros((12, 1)) for k in ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV")})
    with pytest.raises(ModelFileError, match=r"'shapeMU' has shape \(12, 1\), expected \(160470, 1\)"):
        bfm.read_morphable_model(tmp_path / "shape.mat")
    # Truncated expression basis: the size check fires before any allocation.
    data = (synthetic_dir / "Exp_Pca.bin").read_bytes()
    (tmp_path / "Exp_Pca.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="but the file has"):
        bfm.read_exp_pca(tmp_path / "Exp_Pca.bin")
    # Truncated front model.
    blob = (synthetic_dir / "BFM_model_front.mat").read_bytes()
    (tmp_path / "BFM_model_front.mat").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ModelFileError, match=f"looks truncated: it is {len(blob) // 3:,} bytes"):
        bfm.load_front_model(tmp_path / "BFM_model_front.mat")


def test_reference_style_front_file_loads(synthetic_dir, tmp_path):
    """A BFM_model_front.mat as the PyTorch reference writes it (no marker, float64 bases) loads too."""
    m = sio.loadmat(synthetic_dir / "BFM_model_front.mat")
    plain = {k: v for k, v in m.items() if not k.startswith("__") and k != bfm.SYNTHETIC_KEY}
    plain["idBase"] = plain["idBase"].astype(np.float64)
    sio.savemat(tmp_path / "BFM_model_front.mat", plain)
    model = bfm.load_front_model(tmp_path / "BFM_model_front.mat")
    assert not model.synthetic and model.name == "BFM09"
    ref = plain["meanshape"].reshape(-1, 3).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.mean_shape), ref - ref.mean(0), atol=1e-6)
