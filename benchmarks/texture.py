"""Texture extraction: time per face at batch 16, recovery of a known albedo, UV distortion.

Prints one JSON line:
- uv: time to compute the UV map (`face_uv`, no cache) and its distortion (`uv_distortion`);
  atlas_s: the UV layout rasterized at the texture size;
- extraction at batch 16 (512 x 512 maps by default) from synthetic 448 x 448 "photos" (the
  224 crops upscaled 2x, sampled through trans_params as real photos are): compile time of
  the first call, then the median per face; `render_faces` alone on the same batch (the
  reconstruction's own program, which extraction runs first) as the in-process reference;
- recovery: renders with known albedo, frontal and at 30 degrees of yaw, extracted with the
  true shape, pose and light but the MEAN albedo: the error of the de-lit albedo on fully
  visible texels (0-1 units; texels whose true colour clips at white are left out) against
  that of the mean albedo, and whether hidden texels hold exactly the model's albedo.
"""

from __future__ import annotations

import argparse
import time

import cv2
import jax
import numpy as np
from common import emit, median_seconds

from jaxface import Camera
from jaxface.model.synthetic import synthetic_face_model
from jaxface.model.uv import face_uv, uv_distortion
from jaxface.render import render_faces
from jaxface.synth_data import SceneConfig, sample_coeffs
from jaxface.texture import TextureConfig, extract_textures, texture_atlas


def recovery(model, atlas, config):
    """Albedo errors of a frontal and a 30-degree view (see the module docstring)."""
    coeffs = sample_coeffs(jax.random.key(5), 2, SceneConfig(max_shift=0.0, max_depth=0.0))
    coeffs = jax.tree.map(np.asarray, coeffs)._replace(
        angle=np.array([[0, 0, 0], [0, np.deg2rad(30.0), 0]], np.float32))
    face, out = render_faces(model, coeffs, Camera())
    photos = np.round(np.asarray(out.image) * 255).astype(np.uint8)
    guess = coeffs._replace(tex=np.zeros_like(coeffs.tex))
    maps = extract_textures(model, guess, list(photos), atlas=atlas, config=config)
    corners = np.asarray(model.tris)[atlas.tri]

    def at_texels(per_vertex):
        return np.einsum("nk,bnkc->bnc", atlas.bary, np.asarray(per_vertex)[:, corners])

    true, lit = at_texels(face.albedo), at_texels(face.colors)
    prior = at_texels(np.repeat(np.asarray(model.mean_tex)[None] / 255.0, 2, axis=0))
    flat = lambda a: a.reshape(2, -1, *a.shape[3:])[:, atlas.texels]  # noqa: E731
    got, weight = flat(maps.albedo), flat(maps.visibility)
    out = {}
    for i, name in enumerate(("frontal", "yaw30")):
        full = (weight[i] == 1) & (lit[i].max(axis=1) < 0.98)
        err = np.abs(got[i] - true[i])[full]
        hidden = weight[i] == 0
        out[name] = {
            "fully_visible": round(float(full.mean()), 3), "hidden": round(float(hidden.mean()), 3),
            "albedo_error_mean": round(float(err.mean()), 4),
            "albedo_error_p95": round(float(np.percentile(err, 95)), 4),
            "mean_albedo_error": round(float(np.abs(prior[i] - true[i])[full].mean()), 4),
            "hidden_from_model": bool(np.abs(got[i][hidden] - prior[i][hidden]).max(initial=0) < 1e-5),
        }
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512, help="texture side (default 512)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = synthetic_face_model()
    config = TextureConfig(size=args.size)

    t = time.perf_counter()
    uv = face_uv(model)
    uv_s = time.perf_counter() - t
    dist = uv_distortion(uv, model.tris, model.mean_shape)
    t = time.perf_counter()
    atlas = texture_atlas(model, args.size, uv=uv)
    atlas_s = time.perf_counter() - t

    coeffs = jax.tree.map(np.asarray, sample_coeffs(jax.random.key(0), args.batch, SceneConfig()))
    _, out = render_faces(model, coeffs, Camera())
    crops = np.round(np.asarray(out.image) * 255).astype(np.uint8)
    photos = [cv2.resize(c, (448, 448), interpolation=cv2.INTER_CUBIC) for c in crops]
    trans = np.tile(np.array([[448, 448, 0.5, 224, 224]], np.float64), (args.batch, 1))  # crop = photo / 2

    def extract():
        return extract_textures(model, coeffs, photos, trans, atlas=atlas, config=config, batch_size=args.batch)

    t = time.perf_counter()
    extract()
    compile_s = time.perf_counter() - t
    steady = median_seconds(extract, repeats=args.repeats)
    render = median_seconds(lambda: render_faces(model, coeffs, Camera()), repeats=args.repeats)
    rec = recovery(model, atlas, config)
    emit("texture", {
        "model": model.label, "size": args.size, "batch": args.batch,
        "uv": {"seconds": round(uv_s, 3), **{k: round(v, 4) if isinstance(v, float) else v for k, v in dist.items()}},
        "atlas_s": round(atlas_s, 3),
        "extraction": {"compile_s": round(compile_s, 2), "ms_per_face": round(1e3 * steady / args.batch, 1),
                       "render_faces_ms_per_face": round(1e3 * render / args.batch, 1),
                       "ratio_to_render_faces": round(steady / render, 2)},
        "recovery": rec,
        "targets": {
            "uv_no_flipped_triangle": dist["flipped"] == 0,
            "uv_in_unit_square": dist["in_unit_square"],
            "frontal_albedo_recovered": rec["frontal"]["albedo_error_mean"] < 0.01,
            "yaw30_albedo_recovered": rec["yaw30"]["albedo_error_mean"] < 0.01,
            "hidden_side_from_model": rec["yaw30"]["hidden_from_model"] and rec["yaw30"]["hidden"] > 0.2,
        },
    })


if __name__ == "__main__":
    main()
