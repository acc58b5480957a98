"""Textured mesh export (.obj + .mtl + .png, .glb) through trimesh, and the per-image result
files with textures: names, the .mat keys as the TF reference stores them, resuming."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from jaxface.coeffs import LAYOUT, Coeffs
from jaxface.outputs import (
    RESULT_KINDS,
    TEXTURE_KINDS,
    load_mat,
    load_obj,
    outputs_exist,
    result_paths,
    save_outputs,
    save_png,
)
from jaxface.outputs.mesh import GLB_SCALE, save_glb, save_textured_obj
from jaxface.reconstruct import Reconstruction
from jaxface.texture import Textures

trimesh = pytest.importorskip("trimesh")
V, T = 35709, 70789


@pytest.fixture(scope="module")
def mesh(synthetic_model):
    from jaxface.model.uv import face_uv

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)  # not square: rows and columns stay apart
    return np.asarray(synthetic_model.mean_shape), np.asarray(synthetic_model.tris), face_uv(synthetic_model), texture


def test_textured_obj_round_trip(tmp_path, mesh):
    verts, tris, uv, texture = mesh
    save_png(tmp_path / "x_texture.png", texture)
    obj, mtl = save_textured_obj(tmp_path / "x_mesh.obj", verts, tris, uv, texture, tmp_path / "x_texture.png")
    assert mtl.name == "x_mesh.mtl"
    lines = obj.read_text().splitlines()
    assert "mtllib x_mesh.mtl" in lines and sum(ln.startswith("vt ") for ln in lines) == V
    assert next(ln for ln in lines if ln.startswith("f ")).count("/") == 3  # f a/a b/b c/c
    mtl_lines = mtl.read_text().splitlines()
    assert "map_Kd x_texture.png" in mtl_lines and "Kd 1.00000000 1.00000000 1.00000000" in mtl_lines

    back = trimesh.load(obj, process=False)
    assert back.vertices.shape == (V, 3) and back.faces.shape == (T, 3)
    np.testing.assert_allclose(back.vertices, verts, atol=1e-7)
    np.testing.assert_array_equal(back.faces, tris)
    np.testing.assert_allclose(back.visual.uv, uv, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(back.visual.material.image.convert("RGB")), texture)
    v2, _, t2 = load_obj(obj)  # jaxface's own reader skips the /vt parts
    np.testing.assert_allclose(v2, verts, atol=1e-7)
    np.testing.assert_array_equal(t2, tris)


def test_glb_round_trip(tmp_path, mesh):
    verts, tris, uv, texture = mesh
    path = save_glb(tmp_path / "x.glb", verts, tris, uv, texture)
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunk_len, chunk_type = struct.unpack("<I4s", data[12:20])
    tree = json.loads(data[20:20 + chunk_len])
    assert chunk_type == b"JSON" and tree["images"][0]["mimeType"] == "image/png"
    pbr = tree["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0 and pbr["baseColorTexture"]["index"] == 0

    scene = trimesh.load(path, process=False)
    (back,) = scene.geometry.values()
    assert back.vertices.shape == (V, 3)
    np.testing.assert_allclose(back.vertices, verts * GLB_SCALE, atol=1e-7)
    np.testing.assert_array_equal(back.faces, tris)
    np.testing.assert_allclose(back.visual.uv, uv, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.visual.material.baseColorTexture.convert("RGB")), texture)


def test_missing_trimesh_is_a_clear_error(monkeypatch, mesh):
    import sys

    from jaxface.outputs import mesh as mesh_module

    for name in [m for m in sys.modules if m == "trimesh" or m.startswith("trimesh.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    for write in (mesh_module.format_glb, lambda *a: mesh_module.format_textured_obj(*a, "a.png", "a.mtl")):
        with pytest.raises(ImportError, match=r"pip install 'jaxface\[mesh\]'"):
            write(*mesh)


def _reconstruction(v: int, seed: int = 0) -> Reconstruction:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    mask = np.zeros((1, 224, 224), f32)
    mask[0, 50:150, 60:160] = 1
    return Reconstruction(
        coeffs=Coeffs(**{name: rng.normal(size=(1, w)).astype(f32) for name, w in LAYOUT}),
        shape=rng.normal(size=(1, v, 3)).astype(f32), vertices=rng.normal(size=(1, v, 3)).astype(f32),
        colors=rng.uniform(0, 1.3, (1, v, 3)).astype(f32), albedo=rng.uniform(0, 1, (1, v, 3)).astype(f32),
        landmarks=rng.uniform(0, 200, (1, 68, 2)).astype(f32),
        crop_landmarks=rng.uniform(0, 223, (1, 68, 2)).astype(f32),
        crop_detections=rng.uniform(0, 223, (1, 5, 2)).astype(f32),
        crops=rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8),
        rendered=rng.uniform(0, 1, (1, 224, 224, 3)).astype(f32) * mask[..., None], mask=mask,
        trans_params=np.array([[300, 340, 1, 150, 170]], np.float64), image_rendered=(None,), image_mask=(None,),
        overlays=(rng.integers(0, 256, (340, 300, 3), dtype=np.uint8),), status=("ok",), method="fit",
        model_label="test")


def test_save_outputs_names_and_tf_keys(tmp_path, mesh):
    verts, tris, uv, texture = mesh
    recon = _reconstruction(V)
    save_outputs(recon, 0, tmp_path, "img", tris)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"img.mat", "img_mesh.obj", "img_overlay.png"}  # the TF reference's demo.py names
    mat = load_mat(tmp_path / "img.mat")
    # recon_img: RGBA, RGB 0-255, alpha the face mask in 0-1 (tf_mesh_renderer's alpha)
    assert mat["recon_img"].shape == (224, 224, 4)
    np.testing.assert_array_equal(mat["recon_img"][..., 3], recon.mask[0])
    np.testing.assert_allclose(mat["recon_img"][..., :3], recon.rendered[0] * 255, rtol=1e-6)
    # face_color: not clipped (colours above 1 are stored above 255); lm_5p: the detections
    assert mat["face_color"].max() > 255
    np.testing.assert_array_equal(mat["face_color"], recon.colors[0] * np.float32(255))
    np.testing.assert_array_equal(mat["lm_5p"], recon.crop_detections[0])
    np.testing.assert_array_equal(mat["lm_68p"], recon.crop_landmarks[0])
    _, colors, _ = load_obj(tmp_path / "img_mesh.obj")
    np.testing.assert_array_equal(colors, np.clip(recon.colors[0], 0, 1))  # only the .obj clips


def test_save_outputs_with_textures_and_resume(tmp_path, mesh):
    verts, tris, uv, texture = mesh
    recon = _reconstruction(V, seed=1)
    s = 32
    rng = np.random.default_rng(2)
    maps = Textures(rng.uniform(0, 1, (s, s, 3)).astype(np.float32), rng.uniform(0, 1, (s, s, 3)).astype(np.float32),
                    rng.uniform(0, 1, (s, s)).astype(np.float32))
    assert not outputs_exist(tmp_path, "img", RESULT_KINDS + TEXTURE_KINDS)
    save_outputs(recon, 0, tmp_path, "img", tris, textures=maps, uv=uv)
    where = result_paths(tmp_path, "img")
    assert {p.name for p in tmp_path.iterdir()} == {where.of(k).name for k in RESULT_KINDS + TEXTURE_KINDS}
    assert outputs_exist(tmp_path, "img", RESULT_KINDS + TEXTURE_KINDS)
    import cv2

    saved = cv2.imread(str(where.texture))[..., ::-1]
    np.testing.assert_array_equal(saved, np.round(maps.texture * 255).astype(np.uint8))
    vis = cv2.imread(str(where.visibility), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(vis, np.round(maps.visibility * 255).astype(np.uint8))
    back = trimesh.load(where.obj, process=False)
    np.testing.assert_allclose(back.vertices, recon.vertices[0], atol=1e-6)
    np.testing.assert_allclose(back.visual.uv, uv, atol=1e-7)


def test_outputs_exist_reads_older_names(tmp_path):
    for name in ("old.mat", "old.obj", "old_overlay.png"):  # NAME.obj: jaxface before the TF names
        (tmp_path / name).write_bytes(b"x")
    assert outputs_exist(tmp_path, "old")
    assert not outputs_exist(tmp_path, "old", RESULT_KINDS + TEXTURE_KINDS)
    paths = result_paths(tmp_path, "img")
    assert [paths.mat.name, paths.obj.name, paths.overlay.name, paths.glb.name, paths.mtl.name] == [
        "img.mat", "img_mesh.obj", "img_overlay.png", "img.glb", "img_mesh.mtl"]
