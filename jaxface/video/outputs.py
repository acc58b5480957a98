"""Files of a video reconstruction: `coeffs.npz`, `overlay.mp4`, per-frame meshes, and the
clip's identity as `identity.mat` / `identity_mesh.obj`. Every file is written atomically
inside the output folder (`jaxface.outputs`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import five_from_68, flip_y
from jaxface.model.face_model import FaceModel
from jaxface.outputs import atomic_output, blend_overlay, draw_landmarks, output_path, save_mat, save_obj
from jaxface.render import render_faces
from jaxface.video.frames import warp_to_frame
from jaxface.video.io import video_writer
from jaxface.video.track import INTERPOLATED, VideoResult

COEFFS_NPZ, OVERLAY_MP4, IDENTITY_MAT, IDENTITY_OBJ, MESH_DIR = (
    "coeffs.npz", "overlay.mp4", "identity.mat", "identity_mesh.obj", "meshes")


def _render(model: FaceModel, coeffs: Coeffs, idx: np.ndarray, batch: int):
    """(Face, RenderOutput) as numpy for frames `idx` (at most `batch`), rendered at `batch`
    (padded: one compiled program for every chunk)."""
    pad = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
    face, out = render_faces(model, Coeffs(*(np.asarray(x)[pad] for x in coeffs)), Camera())
    return jax.tree.map(lambda x: np.asarray(x)[: len(idx)], (face, out))


def overlays(model: FaceModel, result: VideoResult, frames, alpha: float = 0.8, batch: int = 16, meshes=None):
    """Yield u8[H, W, 3] per frame: the rendering warped onto the frame, blended at `alpha`,
    the projected landmarks drawn, interpolated frames labelled. frames: the clip's frames
    again (an iterable, consumed once). meshes: None, or a function (position, posed vertices
    f32[V, 3], colours f32[V, 3]) called per frame."""
    import cv2

    n = len(result.status)
    it = iter(frames)

    def one(args):
        pos, frame, rendered, mask = args
        ren, msk = warp_to_frame(rendered, mask, result.trans_params[pos])
        out = draw_landmarks(blend_overlay(frame, ren, msk, alpha), result.landmarks[pos])
        if result.status[pos] == INTERPOLATED:
            cv2.putText(out, "interpolated", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2, cv2.LINE_AA)
        return out

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, n, batch):
            idx = np.arange(start, min(start + batch, n))
            chunk = [next(it, None) for _ in idx]
            if any(f is None for f in chunk):
                raise ValueError(f"the frames ran out before frame {n}: pass the same frames as to reconstruct_video")
            face, out = _render(model, result.coeffs, idx, batch)
            if meshes is not None:
                for k, pos in enumerate(idx):
                    meshes(pos, face.vertices[k], np.clip(face.colors[k], 0, 1))
            yield from pool.map(one, zip(idx, chunk, out.image, out.mask))


def save_coeffs(path, result: VideoResult, frame_index, fps: float) -> Path:
    """`coeffs.npz` (read with numpy.load, no pickle): coeffs f32[F, 257] (reference order),
    frame_index i64[F], status i32[F] (0 tracked, 1 interpolated), reason str[F],
    landmarks f32[F, 68, 2] (frame pixels, y down), trans_params f64[F, 5], identity f32[257],
    fps, method, model."""
    frame_index = np.asarray(frame_index, np.int64)
    if frame_index.shape != result.status.shape:
        raise ValueError(f"frame_index has {frame_index.shape[0]} entries for {len(result.status)} frames")
    path = Path(path)
    with atomic_output(path) as tmp:
        np.savez(tmp, coeffs=np.asarray(result.coeffs.to_vector(), np.float32), frame_index=frame_index,
                 status=result.status, reason=np.array(result.reasons, dtype=str), landmarks=result.landmarks,
                 trans_params=result.trans_params, identity=np.asarray(result.identity.to_vector(), np.float32),
                 fps=np.float64(fps), method=np.array(result.method), model=np.array(result.model_label))
    return path


def save_identity(out_dir, model: FaceModel, result: VideoResult, batch: int = 16) -> tuple[Path, Path]:
    """`identity.mat` (both reference layouts) and `identity_mesh.obj` of the clip's identity:
    the neutral face (exp 0), frontal, at the origin, under the clip's mean light. The .mat's
    `cropped_img` is the crop of the most frontal tracked frame; the .obj carries the albedo."""
    ident = Coeffs(*(np.asarray(x)[None] for x in result.identity))
    face, out = _render(model, ident, np.zeros(1, int), batch)
    tracked = np.flatnonzero(result.status != INTERPOLATED)
    frontal = tracked[np.argmin(np.abs(np.asarray(result.coeffs.angle)[tracked]).sum(axis=1))]
    lm68 = flip_y(face.landmarks[0])
    mat = save_mat(output_path(out_dir, IDENTITY_MAT), coeffs=result.identity, cropped_img=result.crops[frontal],
                   recon_img=out.image[0], face_shape=face.vertices[0], face_texture=face.albedo[0],
                   face_color=face.colors[0], lm_68p=lm68, lm_5p=five_from_68(lm68))
    obj = save_obj(output_path(out_dir, IDENTITY_OBJ), face.vertices[0], face.albedo[0], np.asarray(model.tris))
    return mat, obj


def save_video_outputs(out_dir, model: FaceModel, result: VideoResult, frames, frame_index, fps: float,
                       meshes: bool = False, alpha: float = 0.8, batch: int = 16, progress: bool = False) -> dict:
    """Write every result file into `out_dir` (see the module docstring); returns {name: path}.

    frames: the clip's frames again, in order (an iterable, consumed once); frame_index: i64[F]
    their numbers in the video (names the meshes `meshes/frame_NNNNNN.obj`)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"coeffs": save_coeffs(output_path(out_dir, COEFFS_NPZ), result, frame_index, fps)}
    tris = np.asarray(model.tris)

    def mesh(pos, vertices, colors):
        save_obj(output_path(out_dir / MESH_DIR, f"frame_{int(frame_index[pos]):06d}.obj"), vertices, colors, tris)

    path = output_path(out_dir, OVERLAY_MP4)
    with video_writer(path, fps, result.size) as write, \
            tqdm(total=len(result.status), desc="overlay", unit="frame", disable=not progress) as bar:
        for frame in overlays(model, result, frames, alpha, batch, mesh if meshes else None):
            write(frame)
            bar.update(1)
    written["overlay"] = path
    if meshes:
        written["meshes"] = out_dir / MESH_DIR
    written["identity_mat"], written["identity_obj"] = save_identity(out_dir, model, result, batch)
    return written
