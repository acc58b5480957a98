"""Expression edits of fitted faces, and `jaxface edit` on result files.

A face's expression is its 64 `exp` coefficients: the mesh offsets `exp_base @ exp` added
to the identity's shape. Editing them keeps everything else (identity, albedo, pose,
light), so the edited face renders into the same crop:

    neutral = jaxface.neutralize(result)                    # expression zeroed
    mixed = jaxface.transfer_expression(source, target)     # target with source's expression
    face = jaxface.form_faces(model, mixed)

`result`, `source` and `target` are `Coeffs`, anything with `.coeffs` (a `Reconstruction`,
a `FitResult`), a dict from `jaxface.outputs.load_mat`, or the path of a result `.mat` of
either reference's layout (TF `coeff`, or PyTorch `id`/`exp`/... keys).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs


def as_coeffs(result) -> Coeffs:
    """The coefficients of a result (see the module docstring), fields f32[*B, n]."""
    if isinstance(result, Coeffs):
        return result
    if isinstance(result, (str, os.PathLike)):
        from jaxface.outputs import load_mat

        result = load_mat(result)
    if isinstance(result, dict):
        if "coeff" not in result:
            raise ValueError("the result dict has no 'coeff'; read .mat files with jaxface.outputs.load_mat")
        return Coeffs.from_vector(np.asarray(result["coeff"], np.float32))
    if isinstance(getattr(result, "coeffs", None), Coeffs):
        return result.coeffs
    raise TypeError("expected Coeffs, a Reconstruction/FitResult, a load_mat dict or a .mat path, "
                    f"got {type(result).__name__}")


def neutralize(result) -> Coeffs:
    """The coefficients with the expression zeroed (identity, albedo, pose and light kept)."""
    c = as_coeffs(result)
    return c._replace(exp=c.exp * 0)


def transfer_expression(source, target) -> Coeffs:
    """`target`'s identity, albedo, pose and light with `source`'s expression.

    Batches: source with one face (or no batch axis) goes to every target face; otherwise
    the batch shapes must match."""
    s, t = as_coeffs(source), as_coeffs(target)
    exp_s, exp_t = s.exp, t.exp
    if exp_s.shape[-1] != exp_t.shape[-1]:
        raise ValueError(f"expression widths differ: {exp_s.shape[-1]} and {exp_t.shape[-1]}")
    if exp_s.shape != exp_t.shape:
        if int(np.prod(exp_s.shape[:-1])) != 1:
            raise ValueError(f"source has {exp_s.shape[:-1]} faces and target {exp_t.shape[:-1]}; give one source "
                             "face or as many as the target")
        exp_s = exp_s.reshape(-1)
    xp = np if isinstance(exp_t, np.ndarray) else jnp
    return t._replace(exp=xp.broadcast_to(xp.asarray(exp_s, exp_t.dtype), exp_t.shape))


# ----------------------------------------------------------------------------- command line

def _crop_u8(crop):
    """`cropped_img` of a .mat as u8 (files of other writers may hold floats 0-255)."""
    if crop is None or crop.dtype == np.uint8:
        return crop
    return np.clip(np.rint(crop), 0, 255).astype(np.uint8)


def edit_file(model, path: Path, out_dir: Path, edit, atlas=None, config=None) -> Path:
    """Apply `edit` (Coeffs -> Coeffs) to the result `path` and write `out_dir/STEM.mat`,
    `STEM_mesh.obj`, `STEM_overlay.png` (and the texture maps, textured `.obj` and `.glb`
    when `atlas` is given: the texture comes from the file's crop and ORIGINAL coefficients,
    which match the photo; the mesh is the edited one). Returns the .mat path."""
    import jax

    from jaxface.conventions import flip_y
    from jaxface.outputs import (
        blend_overlay,
        draw_landmarks,
        load_mat,
        result_paths,
        sanitize_stem,
        save_mat,
        save_obj,
        save_png,
        save_textures,
    )
    from jaxface.render import render_faces

    data = load_mat(path)
    where = result_paths(out_dir, sanitize_stem(path.stem))
    if where.mat.resolve() == path.resolve():
        raise ValueError(f"the edit of {path} would overwrite it; choose another output folder (-o)")
    if "face_shape" in data and data["face_shape"].shape[0] != model.num_vertices:
        raise ValueError(f"{path} holds a {data['face_shape'].shape[0]}-vertex face but {model.label} has "
                         f"{model.num_vertices}; pass the model it was made with (--bfm)")
    crop = _crop_u8(data.get("cropped_img"))
    if atlas is not None and crop is None:
        raise ValueError(f"{path} has no cropped_img (PyTorch layout) to take a texture from; drop --texture")
    original = as_coeffs(data)
    coeffs = edit(original)
    # The edit and the original in one batch: one compiled program for both.
    both = jax.tree.map(lambda a, b: jnp.concatenate([jnp.asarray(a), jnp.asarray(b)]), coeffs, original)
    face, rendered = render_faces(model, both, Camera())
    made = np.asarray(face.vertices[1])
    face, rendered = jax.tree.map(lambda x: np.asarray(x)[0], (face, rendered))
    if "face_shape" in data and np.abs(made - data["face_shape"]).max() > 1e-3:  # 0.1 mm
        print(f"jaxface edit: warning: {path} was not made with {model.label} (its face_shape differs from "
              "this model's); pass the model it was made with (--bfm)", file=sys.stderr)
    lm68 = flip_y(face.landmarks)
    save_mat(where.mat, coeffs=coeffs, cropped_img=crop,
             recon_img=np.concatenate([rendered.image, rendered.mask[..., None]], axis=-1),
             face_shape=face.vertices, face_texture=face.albedo, face_color=face.colors, lm_68p=lm68,
             lm_5p=data.get("lm_5p"))
    if atlas is None:
        save_obj(where.obj, face.vertices, face.colors, np.asarray(model.tris))
    else:
        from jaxface.texture import extract_textures

        maps = extract_textures(model, original, [crop], atlas=atlas, config=config, batch_size=2)  # the program above
        save_textures(where, jax.tree.map(lambda x: x[0], maps), face.vertices, model.tris, atlas.uv)
    background = crop if crop is not None else np.zeros(rendered.image.shape, np.uint8)
    save_png(where.overlay, draw_landmarks(blend_overlay(background, rendered.image, rendered.mask), lm68))
    return where.mat


def edit_cli(argv=None) -> int:
    """`jaxface edit`: exit 0 when every file was edited, 1 when some failed, 2 on set-up errors."""
    p = argparse.ArgumentParser(
        prog="jaxface edit",
        description="Edit the expression of reconstructed faces: reads result .mat files of either reference's "
        "layout (TF 'coeff' or PyTorch 'id', 'exp', ... keys) and writes OUT/NAME.mat, NAME_mesh.obj and "
        "NAME_overlay.png for the edited face (identity, albedo, pose and light kept).")
    p.add_argument("results", nargs="+", type=Path, help="result .mat files")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--neutral", action="store_true", help="zero the expression")
    what.add_argument("--expression-from", type=Path, metavar="OTHER.mat", help="take the expression of this result")
    p.add_argument("--bfm", type=Path, default=None, help="folder with the Basel model the results were made with "
                   "(default ./BFM, else the SYNTHETIC model)")
    p.add_argument("--texture", action="store_true", help="also write texture maps from the crop in each .mat "
                   "(TF layout), a textured NAME_mesh.obj + .mtl and NAME.glb (needs the [mesh] extra)")
    p.add_argument("--texture-size", type=int, default=512, help="texture side in texels (default 512)")
    args = p.parse_args(argv)

    from jaxface.reconstruct import default_face_model

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        model = default_face_model(args.bfm)
        if args.neutral:
            edit = neutralize
        else:
            source = as_coeffs(args.expression_from)
            edit = lambda c: transfer_expression(source, c)  # noqa: E731
        atlas = config = None
        if args.texture:
            from jaxface.outputs.mesh import _trimesh
            from jaxface.texture import TextureConfig, texture_atlas

            _trimesh()  # fail now, not after the first file, when the extra is missing
            config = TextureConfig(size=args.texture_size)
            atlas = texture_atlas(model, config.size)
    except (OSError, ValueError, ImportError) as e:
        print(f"jaxface edit: set-up failed: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.results:
        try:
            print(f"wrote {edit_file(model, path, args.out, edit, atlas, config)}")
        except (OSError, ValueError) as e:
            failed += 1
            print(f"jaxface edit: {path}: {e}", file=sys.stderr)
    return 1 if failed else 0
