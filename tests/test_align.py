"""Image alignment: against an independent numpy re-derivation of the reference math, against
Pillow's BICUBIC resize (bit for bit), round trips, and every bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from jaxface.align import (align_image, crop_to_image_points, five_from_68, image_to_crop_points,
                           load_image, load_template, read_landmarks, resize_crop, warp_to_image)
from jaxface.paths import index_file

DATA = Path(__file__).parent / "data" / "images"
NAMES = sorted(p.stem for p in DATA.glob("*.jpg"))


def reference_alignment(width: int, height: int, lm_down: np.ndarray):
    """The reference's landmark math, re-derived: x and y fits solved separately by normal
    equations (the 8-unknown system decouples), 5 template points from the raw .mat."""
    lm3d = loadmat(index_file("similarity_Lm3D_all.mat"))["lm"]
    tmpl = np.stack([lm3d[36:42:3].mean(0), lm3d[42:48:3].mean(0), lm3d[30], lm3d[48], lm3d[54]])
    lm = lm_down.astype(np.float32).copy()
    lm[:, 1] = height - 1 - lm[:, 1]
    a = np.hstack([tmpl.astype(np.float64), np.ones((5, 1))])
    kx = np.linalg.solve(a.T @ a, a.T @ lm[:, 0].astype(np.float64))
    ky = np.linalg.solve(a.T @ a, a.T @ lm[:, 1].astype(np.float64))
    s = 102.0 / ((np.linalg.norm(kx[:3]) + np.linalg.norm(ky[:3])) / 2)
    t = np.array([kx[3], ky[3]])
    w, h = int(width * s), int(height * s)
    left = int(np.trunc(w / 2 - 112 + (t[0] - width / 2) * s))
    up = int(np.trunc(h / 2 - 112 + (height / 2 - t[1]) * s))
    lm_crop = (lm.astype(np.float64) - t + [width / 2, height / 2]) * s - [w / 2 - 112, h / 2 - 112]
    return np.array([width, height, s, *t]), (w, h, left, up), lm_crop


@pytest.fixture(scope="module")
def aligned():
    return {n: (load_image(DATA / f"{n}.jpg"), read_landmarks(DATA / f"{n}.txt")) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_math(aligned, name):
    image, lm = aligned[name]
    out = align_image(image, lm)
    tp, (w, h, left, up), lm_crop = reference_alignment(image.shape[1], image.shape[0], lm)
    np.testing.assert_allclose(out.trans_params, tp, rtol=1e-9)
    np.testing.assert_allclose(out.landmarks, lm_crop, atol=1e-6)
    assert out.image.shape == (224, 224, 3) and out.image.dtype == np.uint8
    Image = pytest.importorskip("PIL.Image")
    ref = Image.fromarray(image).resize((w, h), resample=Image.BICUBIC).crop((left, up, left + 224, up + 224))
    np.testing.assert_array_equal(out.image, np.asarray(ref))


def test_template_rule():
    lm3d = loadmat(index_file("similarity_Lm3D_all.mat"))["lm"]
    tmpl = load_template()
    assert tmpl.shape == (5, 3)
    np.testing.assert_allclose(tmpl[0], (lm3d[36] + lm3d[39]) / 2, rtol=1e-6)  # left eye
    np.testing.assert_allclose(tmpl[2], lm3d[30])  # nose tip
    np.testing.assert_array_equal(five_from_68(lm3d), tmpl)


# Both axes scale alike, as in `align_image`: Pillow >= 13 runs the vertical pass first when
# the height shrinks much more than the width; earlier Pillow (the references') never does.
@pytest.mark.parametrize("size,box", [
    ((150, 116), (-20, -10, 130, 90)),    # shrink, box past the top-left corner
    ((1000, 774), (400, 300, 624, 524)),  # enlarge
    ((341, 264), (200, 150, 424, 374)),   # box past the bottom-right corner
    ((50, 38), (300, 300, 524, 524)),     # box fully outside: black
    ((70, 54), (-10, -10, 214, 214)),     # strong shrink (support over 4 source pixels)
])
def test_resize_crop_matches_pillow(size, box):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (240, 310, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(img).resize(size, resample=Image.BICUBIC).crop(box))
    np.testing.assert_array_equal(resize_crop(img, size, box), ref)


def test_point_round_trip(aligned):
    image, lm = aligned[NAMES[0]]
    out = align_image(image, lm)
    back = crop_to_image_points(out.landmarks, out.trans_params)
    np.testing.assert_allclose(back, lm, atol=1e-4)
    pts = np.random.default_rng(1).uniform(-50, 300, (4, 7, 2))
    np.testing.assert_allclose(image_to_crop_points(crop_to_image_points(pts, out.trans_params), out.trans_params),
                               pts, atol=1e-4)


def test_warp_to_image_lines_up():
    """A smooth photo, aligned and warped back, reproduces itself under the mask."""
    h, w = 400, 360
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.stack([xx * 0.5, yy * 0.5, 128 + 60 * np.sin(xx / 40) * np.cos(yy / 50)], -1).round().astype(np.uint8)
    lm = np.array([[150, 170], [230, 168], [190, 215], [160, 260], [222, 258]], np.float32)
    out = align_image(image, lm)
    back, mask = warp_to_image(out.image.astype(np.float32), np.ones((224, 224), np.float32), out.trans_params)
    assert back.shape == (h, w, 3) and mask.shape == (h, w)
    inner = cv2.erode((mask > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inner[lm[:, 1].astype(int), lm[:, 0].astype(int)].all()
    assert np.abs(back[inner] - image[inner]).mean() < 1.0
    assert np.all(back[mask == 0] == 0)


def test_68_points(aligned):
    image, lm5 = aligned[NAMES[0]]
    lm68 = np.repeat(lm5[:1], 68, axis=0)
    for i, idx in enumerate([(36, 39), (42, 45), (30,), (48,), (54,)]):
        lm68[list(idx)] = lm5[i]
    out68, out5 = align_image(image, lm68), align_image(image, lm5)
    np.testing.assert_allclose(out68.trans_params, out5.trans_params, rtol=1e-6)
    assert out68.landmarks.shape == (68, 2)


def test_tiny_image_converts():
    image = np.full((16, 16, 3), 200, np.uint8)
    lm = np.array([[5, 6], [11, 6], [8, 9], [5.5, 12], [10.5, 12]], np.float32)
    out = align_image(image, lm)
    assert out.image.shape == (224, 224, 3)
    assert out.trans_params[2] > 5  # enlarged
    assert out.image[112, 112].tolist() == [200, 200, 200]


# ----------------------------------------------------------------------------- bad alignment input

def _face_lm():
    return np.array([[140, 200], [220, 200], [160, 250], [146, 290], [226, 285]], np.float32)


@pytest.mark.parametrize("lm,match", [
    (_face_lm()[:4], "shape"),
    (_face_lm() + [[1000, 0]], "outside"),
    (_face_lm() * [[-1, 1]], "outside"),
    (np.full((5, 2), 100.0, np.float32), "coincide"),
    (np.stack([np.linspace(100, 300, 5), np.linspace(100, 200, 5)], 1), "collinear"),
    (np.where(np.eye(5, 2) > 0, np.nan, _face_lm()), "NaN"),
])
def test_bad_landmarks(aligned, lm, match):
    image = aligned[NAMES[0]][0]
    with pytest.raises(ValueError, match=match):
        align_image(image, lm)


def test_bad_image_array():
    with pytest.raises(ValueError, match="RGB"):
        align_image(np.zeros((100, 100), np.uint8), _face_lm())
    with pytest.raises(ValueError, match="RGB"):
        align_image(np.zeros((100, 100, 3), np.float32), _face_lm())


# ----------------------------------------------------------------------------- read_landmarks

def test_read_landmarks(tmp_path):
    lm = read_landmarks(DATA / "000002.txt")
    assert lm.shape == (5, 2) and lm.dtype == np.float32
    np.testing.assert_allclose(lm[0], [142.84, 207.18], rtol=1e-6)
    (tmp_path / "68.txt").write_text("\n".join(f"{i} {2 * i}" for i in range(68)))
    np.testing.assert_allclose(read_landmarks(tmp_path / "68.txt")[2], [30, 60])


@pytest.mark.parametrize("text,match", [
    ("1 2\n3 4\n5 6\n7 8\n", "8 numbers"),
    ("1 2\n3 4\n5 6\n7 8\n9 10\n11 12\n", "12 numbers"),
    ("1 2\n3 nan\n5 6\n7 8\n9 10\n", "NaN"),
    ("1 2\n3 4\nfive 6\n7 8\n9 10\n", "line 3.*'five'"),
    ("", "0 numbers"),
])
def test_read_landmarks_errors(tmp_path, text, match):
    (tmp_path / "x.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_landmarks(tmp_path / "x.txt")


def test_read_landmarks_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="five lines"):
        read_landmarks(tmp_path / "none.txt")


# ----------------------------------------------------------------------------- load_image

def test_load_image_matches_pillow():
    Image = pytest.importorskip("PIL.Image")
    path = DATA / f"{NAMES[0]}.jpg"
    np.testing.assert_array_equal(load_image(path), np.asarray(Image.open(path).convert("RGB")))


def test_load_image_conversions(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([rgb[:, :, ::-1], np.full((20, 30), 7, np.uint8)]))
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    gray = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    deep = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), deep[:, :, ::-1])
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png"), rgb)
    Image = pytest.importorskip("PIL.Image")  # OpenCV cannot write gray + alpha
    Image.fromarray(np.dstack([gray, gray]), "LA").save(tmp_path / "gray_alpha.png")
    np.testing.assert_array_equal(load_image(tmp_path / "gray_alpha.png"), np.dstack([gray] * 3))


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "none.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(tmp_path / "junk.jpg")
    (tmp_path / "huge.png").write_bytes(_png_header(20000, 20000))
    with pytest.raises(ValueError, match="20000x20000.*MP"):
        load_image(tmp_path / "huge.png")
    jpg = (DATA / f"{NAMES[0]}.jpg").read_bytes()
    i = jpg.index(b"\xff\xc0")  # baseline start-of-frame: patch height/width to 30000
    (tmp_path / "huge.jpg").write_bytes(jpg[:i + 5] + struct.pack(">HH", 30000, 30000) + jpg[i + 9:])
    with pytest.raises(ValueError, match="30000x30000"):
        load_image(tmp_path / "huge.jpg")
