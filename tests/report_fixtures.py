"""A small output folder with known contents for the report tests (no reconstruction needed).

quad: a 2x2 square at z = 0 (four vertices, one colour, pose angles ANGLES), input photo given
grid: a 181x181 grid (32,761 vertices) whose red channel rises from 0 at x = -1 to 1 at x = 1
a failure whose message holds HTML, and a run.json naming the input photo of `quad`.
"""

from __future__ import annotations

import json

import numpy as np

from jaxface.coeffs import LAYOUT, NUM_COEFFS
from jaxface.outputs import FailureLog, save_mat, save_obj, save_png

QUAD_COLOR = (0.2, 0.6, 0.4)
ANGLES = (0.1, -0.2, 0.3)  # radians about x, y, z
PHOTO_RGB = (10, 200, 30)
CROP_RGB = (200, 40, 90)
HOSTILE = '<script>alert("x")</script> & </td>'
GRID_N = 181


def _angle_slice() -> slice:
    start = 0
    for name, width in LAYOUT:
        if name == "angle":
            return slice(start, start + width)
        start += width
    raise AssertionError("no angle coefficients")


def quad_mesh():
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
    return v, np.tile(np.float32(QUAD_COLOR), (4, 1)), np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def grid_mesh(n: int = GRID_N):
    x, y = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], -1).astype(np.float32)
    c = np.stack([(x.ravel() + 1) / 2, np.full(n * n, 0.5), np.full(n * n, 0.5)], -1).astype(np.float32)
    vid = np.arange(n * n).reshape(n, n)
    a, b, cc, d = vid[:-1, :-1], vid[:-1, 1:], vid[1:, :-1], vid[1:, 1:]
    tris = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, cc], -1).reshape(-1, 3)])
    return v, c, tris.astype(np.int32)


def write_result(out, stem: str, mesh, angles=(0.0, 0.0, 0.0), crop_rgb=CROP_RGB) -> None:
    v, c, t = mesh
    vec = np.zeros(NUM_COEFFS, np.float32)
    vec[_angle_slice()] = angles
    crop = np.empty((224, 224, 3), np.uint8)
    crop[:] = crop_rgb
    save_mat(out / f"{stem}.mat", coeffs=vec, cropped_img=crop, recon_img=crop, face_shape=v, face_texture=c,
             face_color=c, lm_68p=np.zeros((68, 2)), lm_5p=np.zeros((5, 2)))
    save_obj(out / f"{stem}_mesh.obj", v, c, t)
    overlay = np.zeros((100, 120, 3), np.uint8)
    overlay[:, 60:] = 255
    save_png(out / f"{stem}_overlay.png", overlay)


def make_output_folder(root):
    """OUT with results `grid` and `quad`, the failed photo `broken`, and run.json."""
    out = root / "out"
    out.mkdir(parents=True)
    photos = root / "photos"
    photo = np.empty((300, 400, 3), np.uint8)
    photo[:] = PHOTO_RGB
    save_png(photos / "quad.png", photo)
    write_result(out, "quad", quad_mesh(), ANGLES)
    write_result(out, "grid", grid_mesh())
    log = FailureLog()
    log.add(photos / "broken.jpg", "load", HOSTILE)
    log.write(out / "failures.csv")
    run = {"command": "reconstruct", "model": "test model", "method": "fit", "photos": 3, "skipped": 0,
           "seconds": 1.5, "inputs": {"quad": str(photos / "quad.png")}}
    (out / "run.json").write_text(json.dumps(run))
    return out
