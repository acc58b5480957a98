"""Result files: write, read back (own parsers and scipy), exact values, atomicity, path safety."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from jaxface.coeffs import LAYOUT, Coeffs
from jaxface.outputs import (Failure, FailureLog, OutputPathError, OutputWriteError, blend_overlay,
                             format_obj, load_mat, load_obj, output_path, outputs_exist, read_failures_csv,
                             result_paths, sanitize_stem, save_mat, save_obj, save_overlay,
                             write_failures_csv)

V, T = 35709, 70789


def _mesh(v=V, t=T, seed=0):
    rng = np.random.default_rng(seed)
    verts = rng.normal(scale=0.8, size=(v, 3)).astype(np.float32)
    colors = rng.uniform(0, 1, size=(v, 3)).astype(np.float32)
    tris = rng.integers(0, v, size=(t, 3)).astype(np.int32)
    tris[0] = [0, 1, v - 1]  # first and last vertex, for the one-based check
    return verts, colors, tris


def _results(v=500, seed=0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(
        coeffs=Coeffs(**{name: rng.normal(size=w).astype(f32) for name, w in LAYOUT}),
        cropped_img=rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        recon_img=rng.uniform(0, 1, (224, 224, 3)).astype(f32),
        face_shape=rng.normal(size=(v, 3)).astype(f32),
        face_texture=rng.uniform(0, 1, (v, 3)).astype(f32),
        face_color=rng.uniform(0, 1.2, (v, 3)).astype(f32),
        lm_68p=rng.uniform(0, 223, (68, 2)).astype(f32),
        lm_5p=rng.uniform(0, 223, (5, 2)).astype(f32),
    )


def _leftovers(folder):
    """Temporary files atomic writes may have left (they start with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- .mat

def test_mat_both_layouts_exact(tmp_path):
    r = _results()
    path = save_mat(tmp_path / "a.mat", **r)
    raw = loadmat(path)
    vec = r["coeffs"].to_vector()
    # TF layout (Deep3DFaceReconstruction demo.py)
    assert raw["coeff"].shape == (1, 257) and raw["coeff"].dtype == np.float32
    np.testing.assert_array_equal(raw["coeff"][0], vec)
    assert raw["cropped_img"].dtype == np.uint8
    np.testing.assert_array_equal(raw["cropped_img"], r["cropped_img"])
    np.testing.assert_array_equal(raw["recon_img"], r["recon_img"] * np.float32(255))
    np.testing.assert_array_equal(raw["face_shape"], r["face_shape"])
    np.testing.assert_array_equal(raw["face_texture"], r["face_texture"] * np.float32(255))
    np.testing.assert_array_equal(raw["face_color"], r["face_color"] * np.float32(255))  # not clipped
    np.testing.assert_array_equal(raw["lm_68p"], r["lm_68p"])
    np.testing.assert_array_equal(raw["lm_5p"], r["lm_5p"])
    # PyTorch layout (Deep3DFaceRecon_pytorch save_coeff): (1, w) per group, lm68 (1, 68, 2)
    for name, w in LAYOUT:
        assert raw[name].shape == (1, w) and raw[name].dtype == np.float32
        np.testing.assert_array_equal(raw[name][0], getattr(r["coeffs"], name))
    assert raw["lm68"].shape == (1, 68, 2)
    np.testing.assert_array_equal(raw["lm68"][0], r["lm_68p"])

    loaded = load_mat(path)
    assert set(loaded) == {"cropped_img", "recon_img", "coeff", "face_shape", "face_texture", "face_color",
                           "lm_68p", "lm_5p", "lm68", *(n for n, _ in LAYOUT)}
    np.testing.assert_array_equal(Coeffs.from_vector(loaded["coeff"][0]).to_vector(), vec)


def test_mat_u8_render_and_batched_coeffs(tmp_path):
    r = _results()
    r["recon_img"] = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    r["coeffs"] = Coeffs(*(x[None] for x in r["coeffs"]))  # batch of one is fine
    raw = loadmat(save_mat(tmp_path / "b.mat", **r))
    np.testing.assert_array_equal(raw["recon_img"], r["recon_img"].astype(np.float32))


def test_load_mat_pytorch_only_and_tf_258(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    vec = rng.normal(size=(1, 257)).astype(np.float32)
    c = Coeffs.from_vector(vec)
    savemat(tmp_path / "torch.mat", {name: np.asarray(getattr(c, name)) for name, _ in LAYOUT}
            | {"lm68": rng.normal(size=(1, 68, 2)).astype(np.float32)})
    np.testing.assert_array_equal(load_mat(tmp_path / "torch.mat")["coeff"], vec)
    savemat(tmp_path / "tf.mat", {"coeff": np.concatenate([vec, [[7.0]]], 1).astype(np.float32)})
    np.testing.assert_array_equal(load_mat(tmp_path / "tf.mat")["coeff"], vec)


@pytest.mark.parametrize("bad, match", [
    ({"coeff": np.zeros((1, 100))}, "257"),
    ({"coeff": np.zeros((1, 257)), "lm_68p": np.zeros((5, 2))}, "lm_68p"),
    ({"coeff": np.full((1, 257), np.nan)}, "NaN"),
    ({"coeff": np.zeros((1, 257)), "id": np.ones((1, 80))}, "disagrees"),
    ({"lm_5p": np.zeros((5, 2))}, "no coefficients"),
    ({"coeff": np.zeros((1, 257)), "face_shape": np.zeros((9, 3)), "face_color": np.zeros((8, 3))}, "vertex counts"),
])
def test_load_mat_rejects(tmp_path, bad, match):
    from scipy.io import savemat

    savemat(tmp_path / "bad.mat", bad)
    with pytest.raises(ValueError, match=match):
        load_mat(tmp_path / "bad.mat")


def test_load_mat_not_a_mat(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"this is not a MATLAB file" * 10)
    with pytest.raises(ValueError, match="x.mat"):
        load_mat(tmp_path / "x.mat")
    with pytest.raises(FileNotFoundError):
        load_mat(tmp_path / "missing.mat")


@pytest.mark.parametrize("key, value, match", [
    ("cropped_img", np.zeros((224, 224, 3), np.float32), "uint8"),
    ("recon_img", np.full((224, 224, 3), 200.0, np.float32), "0-1"),
    ("face_texture", np.zeros((499, 3), np.float32), "face_texture"),
    ("face_shape", np.full((500, 3), np.inf, np.float32), "NaN or infinite"),
    ("lm_5p", np.zeros((68, 2), np.float32), "lm_5p"),
    ("coeffs", Coeffs.zeros((2,)), "one face"),
])
def test_save_mat_rejects(tmp_path, key, value, match):
    r = _results() | {key: value}
    with pytest.raises(ValueError, match=match):
        save_mat(tmp_path / "a.mat", **r)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- .obj

def test_obj_round_trip_exact_and_one_based(tmp_path):
    verts, colors, tris = _mesh()
    t0 = time.perf_counter()
    path = save_obj(tmp_path / "face.obj", verts, colors, tris)
    elapsed = time.perf_counter() - t0
    lines = path.read_text().splitlines()
    assert sum(ln.startswith("v ") for ln in lines) == V
    assert sum(ln.startswith("f ") for ln in lines) == T
    first_face = next(ln for ln in lines if ln.startswith("f "))
    assert first_face == f"f 1 2 {V}"
    assert all(len(ln.split()) == 7 for ln in lines[:5])
    v2, c2, t2 = load_obj(path)
    np.testing.assert_array_equal(v2, verts)  # nine digits round-trip float32 exactly
    np.testing.assert_array_equal(c2, colors)
    np.testing.assert_array_equal(t2, tris)
    assert elapsed < 3.0, f"save_obj took {elapsed:.2f} s for the full mesh"


def test_float32_text_round_trips_every_kind_of_float32():
    """Random bit patterns (normals, subnormals, huge), signed zeros and both sides of every
    power of ten come back bit for bit through Python's float parser."""
    from jaxface.outputs.files import float32_text

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    tens = np.float32(10.0) ** np.arange(-45, 39, dtype=np.float32)
    edges = np.concatenate([tens, np.nextafter(tens, np.float32(np.inf)), np.nextafter(tens, np.float32(0))])
    x = np.concatenate([bits[np.isfinite(bits)], edges[np.isfinite(edges)], np.float32([0, -0.0, 1e-45, 3.4028235e38])])
    text = float32_text(x)
    assert text.shape == (x.size, 15)
    spaced = np.concatenate([np.full((x.size, 1), ord(" "), np.uint8), text], axis=1)
    back = np.array([float(t) for t in spaced.tobytes().decode().split()], np.float32)
    np.testing.assert_array_equal(back, x)
    assert float32_text(np.float32([1, -0.25, 123456.789])).tobytes() == b" 1.00000000e+00-2.50000000e-01 1.23456789e+05"


def test_obj_clips_colours_and_reads_other_writers(tmp_path):
    verts, colors, tris = _mesh(4, 2)
    colors[0] = [-0.5, 0.5, 1.5]
    _, c2, _ = load_obj(save_obj(tmp_path / "c.obj", verts, colors, tris))
    np.testing.assert_array_equal(c2[0], [0, 0.5, 1])
    # trimesh-style file: comments, normals, v/vt/vn faces, no colours
    (tmp_path / "other.obj").write_text("# made elsewhere\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\n"
                                        "f 1//1 2//1 3//1\n")
    v, c, t = load_obj(tmp_path / "other.obj")
    assert c is None and v.shape == (3, 3)
    np.testing.assert_array_equal(t, [[0, 1, 2]])


@pytest.mark.parametrize("text, match", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "one-based"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "one-based"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3 4\n", "triangle"),
    ("v 0 0 0 1 1 1\nv 1 0 0\n", "'v' line"),
    ("v 0 0 x\n", "'v' line"),
    ("v 0 0 nan\n", "NaN"),
])
def test_load_obj_rejects(tmp_path, text, match):
    (tmp_path / "bad.obj").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_obj(tmp_path / "bad.obj")


def test_format_obj_rejects_bad_indices():
    verts, colors, tris = _mesh(4, 2)
    with pytest.raises(ValueError, match="zero-based"):
        format_obj(verts, colors, tris + 1)
    with pytest.raises(ValueError, match="integer"):
        format_obj(verts, colors, tris.astype(np.float32))


# ----------------------------------------------------------------------------- overlay

def _overlay_inputs(h=60, w=80):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rendering = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[10:40, 20:60] = 1
    return image, rendering, mask


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_overlay_pixels(tmp_path, alpha):
    image, rendering, mask = _overlay_inputs()
    path = save_overlay(tmp_path / "o.png", image, rendering, mask, None, alpha=alpha)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]  # PNG is lossless; BGR on disk
    off = mask == 0
    np.testing.assert_array_equal(back[off], image[off])
    blend = image.astype(np.float64) * (1 - alpha) + rendering.astype(np.float64) * 255 * alpha
    np.testing.assert_allclose(back[~off], blend[~off], atol=0.51)
    np.testing.assert_array_equal(back, blend_overlay(image, rendering, mask, alpha))


def test_overlay_landmarks_are_red_dots_in_rgb(tmp_path):
    image = np.zeros((100, 120, 3), np.uint8)
    pts = np.array([[30.0, 20.0], [90.0, 70.0], [500.0, -40.0]], np.float32)  # last one off the image
    path = save_overlay(tmp_path / "l.png", image, np.zeros((100, 120, 3), np.float32), np.zeros((100, 120)), pts)
    back = cv2.imread(str(path))[:, :, ::-1]
    for x, y in pts[:2].astype(int):
        assert back[y, x, 0] > 200 and back[y, x, 1] == 0 and back[y, x, 2] == 0  # red, not blue
    assert back[50, 5].sum() == 0


def test_overlay_rejects_mismatched_shapes(tmp_path):
    image, rendering, mask = _overlay_inputs()
    with pytest.raises(ValueError, match="mask"):
        save_overlay(tmp_path / "o.png", image, rendering, mask[:-1])
    with pytest.raises(ValueError, match="uint8"):
        save_overlay(tmp_path / "o.png", image.astype(np.float32), rendering, mask)


# ----------------------------------------------------------------------------- failures.csv, resume

def test_failures_csv_round_trip(tmp_path):
    log = FailureLog()
    log.add("in/a b.jpg", "detect", "no face found")
    log.add("in/c.png", "load", ValueError('bad, "quoted"\nsecond line'))
    path = log.write(tmp_path / "failures.csv")
    assert path.read_text().splitlines()[0] == "image,stage,message"
    rows = read_failures_csv(path)
    assert rows == [Failure("in/a b.jpg", "detect", "no face found"),
                    Failure("in/c.png", "load", 'ValueError: bad, "quoted" second line')]
    write_failures_csv(path, [])
    assert read_failures_csv(path) == []


def test_outputs_exist(tmp_path):
    paths = result_paths(tmp_path, "img")
    assert [paths.mat.name, paths.obj.name, paths.overlay.name] == ["img.mat", "img_mesh.obj", "img_overlay.png"]
    assert not outputs_exist(tmp_path, "img")
    for p in (paths.mat, paths.obj):
        p.write_bytes(b"x")
    assert outputs_exist(tmp_path, "img", kinds=("mat", "obj"))
    assert not outputs_exist(tmp_path, "img")
    paths.overlay.write_bytes(b"")  # empty: not a finished result
    assert not outputs_exist(tmp_path, "img")
    paths.overlay.write_bytes(b"x")
    assert outputs_exist(tmp_path, "img")


# ----------------------------------------------------------------------------- path safety

@pytest.mark.parametrize("name", ["../x.mat", "a/b.mat", "..", "", "/etc/passwd", "a\\b.mat", "a\0b.mat"])
def test_output_path_rejects_escapes(tmp_path, name):
    with pytest.raises(OutputPathError):
        output_path(tmp_path, name)


def test_result_paths_reject_escaping_stems(tmp_path):
    with pytest.raises(OutputPathError):
        result_paths(tmp_path, "../evil")
    assert outputs_exist(tmp_path, "ok") is False


@pytest.mark.parametrize("stem, safe", [
    ("000002", "000002"), ("my photo (1)", "my_photo_1_"), ("..hidden", "hidden"), ("a/../b", "a_.._b"),
    ("visage_été", "visage_été"), ("x" * 300, "x" * 200),
])
def test_sanitize_stem(tmp_path, stem, safe):
    assert sanitize_stem(stem) == safe
    assert output_path(tmp_path, sanitize_stem(stem) + ".mat").parent == tmp_path


def test_sanitize_stem_refuses_nothing_left():
    with pytest.raises(OutputPathError):
        sanitize_stem("...")
    with pytest.raises(OutputPathError):
        sanitize_stem("/ /")


# ----------------------------------------------------------------------------- atomicity and errors

def test_failed_mat_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import scipy.io

    target = tmp_path / "a.mat"
    target.write_bytes(b"older result")

    def half_then_crash(path, data, **kw):
        with open(path, "wb") as f:
            f.write(b"MATLAB 5.0 partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(scipy.io, "savemat", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_mat(target, **_results())
    assert target.read_bytes() == b"older result"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["obj", "overlay", "csv"])
def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, writer):
    target = tmp_path / "out.bin"
    target.write_bytes(b"older result")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OutputWriteError, match="cannot write .*out.bin.*No space left"):
        if writer == "obj":
            save_obj(target, *_mesh(10, 5))
        elif writer == "overlay":
            save_overlay(target, *_overlay_inputs())
        else:
            write_failures_csv(target, [Failure("a.jpg", "detect", "no face")])
    monkeypatch.undo()
    assert target.read_bytes() == b"older result"
    assert _leftovers(tmp_path) == []


def test_unwritable_output_folder_error(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # what a read-only folder does, even for root
    with pytest.raises(OutputWriteError, match=r"cannot write .*a\.obj: Permission denied\. Check that the output folder"):
        save_obj(tmp_path / "a.obj", *_mesh(10, 5))


def test_output_folder_is_a_file(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(OutputWriteError, match="writable folder"):
        save_obj(tmp_path / "out" / "a.obj", *_mesh(10, 5))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match="Permission denied"):
            save_obj(ro / "a.obj", *_mesh(10, 5))
    finally:
        ro.chmod(0o755)


def test_load_mat_refuses_huge_arrays_from_headers(tmp_path):
    from scipy.io import savemat

    # compressed zeros: a small file whose header announces 25 million values
    savemat(tmp_path / "bomb.mat", {"face_shape": np.zeros((1 << 23, 3), np.uint8),
                                    "coeff": np.zeros((1, 257))}, do_compression=True)
    assert (tmp_path / "bomb.mat").stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="too large"):
        load_mat(tmp_path / "bomb.mat")
