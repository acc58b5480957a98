"""Per-image result files: `.mat` (both reference layouts), `_mesh.obj`, overlay `.png`, `failures.csv`;
with textures the maps, a textured `.obj` + `.mtl` and a `.glb` (`mesh`, extra `[mesh]`).

Every writer goes through `jaxface.fileio.atomic_path` (temp file beside the destination,
renamed on success), so an interrupted run never leaves a half-written result, and an older
result survives a failed rewrite. File names come from `result_paths` / `output_path`, which
keep every path inside the output folder; `sanitize_stem` turns an image's file name into a
safe stem and `assign_stems` a distinct one per photo (`manifest.csv`). `files` holds the
formats, `paths` the names, `manifest` who owns which name, `overlay` the pictures,
`failures` the CSV of photos without a result.
"""

from __future__ import annotations

import numpy as np

from jaxface.coeffs import Coeffs
from jaxface.outputs.failures import (
    FAILURE_COLUMNS,
    Failure,
    FailureLog,
    read_failures_csv,
    write_failures_csv,
)
from jaxface.outputs.files import (
    MAX_MAT_BYTES,
    MAX_MAT_ELEMENTS,
    MAX_OBJ_BYTES,
    TF_KEYS,
    TORCH_KEYS,
    format_obj,
    load_mat,
    load_obj,
    save_mat,
    save_obj,
)
from jaxface.outputs.manifest import (
    MANIFEST_NAME,
    assign_stems,
    image_key,
    read_manifest,
    write_manifest,
)
from jaxface.outputs.overlay import (
    blend_overlay,
    draw_landmarks,
    save_overlay,
    save_png,
)
from jaxface.outputs.paths import (
    LEGACY_NAMES,
    MAX_STEM_CHARS,
    OK,
    RESULT_KINDS,
    TEXTURE_KINDS,
    OutputPathError,
    OutputWriteError,
    ResultPaths,
    atomic_output,
    output_path,
    outputs_exist,
    result_paths,
    sanitize_stem,
)

__all__ = [
    "FAILURE_COLUMNS", "LEGACY_NAMES", "MANIFEST_NAME", "MAX_MAT_BYTES", "MAX_MAT_ELEMENTS", "MAX_OBJ_BYTES",
    "MAX_STEM_CHARS", "OK", "RESULT_KINDS", "TEXTURE_KINDS", "TF_KEYS", "TORCH_KEYS", "Failure", "FailureLog",
    "OutputPathError", "OutputWriteError", "ResultPaths", "assign_stems", "atomic_output", "blend_overlay",
    "draw_landmarks", "format_obj", "image_key", "load_mat", "load_obj", "output_path", "outputs_exist",
    "read_failures_csv", "read_manifest", "result_paths", "sanitize_stem", "save_mat", "save_obj",
    "save_outputs", "save_overlay", "save_png", "save_textures", "write_failures_csv", "write_manifest",
]


def save_outputs(recon, i: int, out_dir, stem: str, tris, textures=None, uv=None) -> None:
    """Write image i of a `jaxface.Reconstruction` as the TF reference's demo.py does: `STEM.mat`
    (both reference layouts), `STEM_mesh.obj`, and `STEM_overlay.png`.

    As both references do, the mesh and `face_shape` are the posed shape; landmarks in the
    .mat are crop pixels (y down); `recon_img` is RGBA (alpha: the face mask); the overlay is
    in original-image pixels with landmarks. With `textures` (one face's `jaxface.texture.Textures`)
    and `uv` f32[V, 2], `save_textures` writes the maps and a textured `STEM_mesh.obj` + `.glb`.
    """
    if recon.status[i] != OK:
        raise ValueError(f"image {i} has no result ({recon.status[i]})")
    if recon.overlays[i] is None:
        raise ValueError("save_outputs writes the overlay: reconstruct with ReconstructConfig(photo_outputs=True)")
    where = result_paths(out_dir, sanitize_stem(stem))
    save_mat(
        where.mat,
        coeffs=Coeffs(*(np.asarray(x[i]) for x in recon.coeffs)),
        cropped_img=recon.crops[i],
        recon_img=np.concatenate([recon.rendered[i], recon.mask[i][..., None]], axis=-1),
        face_shape=recon.vertices[i],
        face_texture=recon.albedo[i],
        face_color=recon.colors[i],
        lm_68p=recon.crop_landmarks[i],
        lm_5p=recon.crop_detections[i],
    )
    if textures is None:
        save_obj(where.obj, recon.vertices[i], recon.colors[i], np.asarray(tris))
    else:
        save_textures(where, textures, recon.vertices[i], tris, uv)
    save_png(where.overlay, draw_landmarks(recon.overlays[i], recon.landmarks[i]))


def save_textures(where: ResultPaths, textures, vertices, tris, uv) -> None:
    """One face's maps (`STEM_texture.png`, `STEM_albedo.png`, `STEM_visibility.png`) and its
    textured mesh (`STEM_mesh.obj` + `STEM_mesh.mtl`, `STEM.glb`) at the `where` paths.

    textures: `jaxface.texture.Textures` of ONE face (maps without a batch axis);
    vertices f32[V, 3] (posed); tris i32[T, 3]; uv f32[V, 2] (`Atlas.uv`)."""
    from jaxface.outputs import mesh

    texture = mesh.texture_u8(textures.texture)
    save_png(where.texture, texture)
    save_png(where.albedo, mesh.texture_u8(textures.albedo))
    visibility = np.round(np.clip(np.asarray(textures.visibility, np.float32), 0, 1) * 255).astype(np.uint8)
    save_png(where.visibility, np.repeat(visibility[..., None], 3, axis=-1))
    mesh.save_textured_obj(where.obj, vertices, np.asarray(tris), uv, texture, where.texture)
    mesh.save_glb(where.glb, vertices, np.asarray(tris), uv, texture, name=where.texture.stem)
