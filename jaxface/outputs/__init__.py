"""Per-image result files: `.mat` (both reference layouts), `.obj`, overlay `.png`, `failures.csv`.

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
from jaxface.conventions import five_from_68
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
    MAX_STEM_CHARS,
    OK,
    RESULT_KINDS,
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
    "FAILURE_COLUMNS", "MANIFEST_NAME", "MAX_MAT_BYTES", "MAX_MAT_ELEMENTS", "MAX_OBJ_BYTES",
    "MAX_STEM_CHARS", "OK", "RESULT_KINDS", "TF_KEYS", "TORCH_KEYS", "Failure", "FailureLog",
    "OutputPathError", "OutputWriteError", "ResultPaths", "assign_stems", "atomic_output", "blend_overlay",
    "draw_landmarks", "format_obj", "image_key", "load_mat", "load_obj", "output_path", "outputs_exist",
    "read_failures_csv", "read_manifest", "result_paths", "sanitize_stem", "save_mat", "save_obj",
    "save_outputs", "save_overlay", "save_png", "write_failures_csv", "write_manifest",
]


def save_outputs(recon, i: int, out_dir, stem: str, tris) -> None:
    """Write image i of a `jaxface.Reconstruction`: `STEM.mat` (both reference layouts),
    `STEM.obj`, `STEM_overlay.png`.

    As both references do, the mesh and `face_shape` are the posed shape; landmarks in the
    .mat are crop pixels (y down); the overlay is in original-image pixels with landmarks.
    """
    if recon.status[i] != OK:
        raise ValueError(f"image {i} has no result ({recon.status[i]})")
    where = result_paths(out_dir, sanitize_stem(stem))
    lm68 = recon.crop_landmarks[i]
    save_mat(
        where.mat,
        coeffs=Coeffs(*(np.asarray(x[i]) for x in recon.coeffs)),
        cropped_img=recon.crops[i],
        recon_img=recon.rendered[i],
        face_shape=recon.vertices[i],
        face_texture=recon.albedo[i],
        face_color=recon.colors[i],
        lm_68p=lm68,
        lm_5p=five_from_68(lm68),
    )
    save_obj(where.obj, recon.vertices[i], recon.colors[i], np.asarray(tris))
    save_png(where.overlay, draw_landmarks(recon.overlays[i], recon.landmarks[i]))
