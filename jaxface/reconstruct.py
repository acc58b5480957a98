"""`reconstruct(batch)`: photos in, coefficients, meshes, landmarks and renderings out.

Pipeline per batch: load and check each image -> 5/68-point landmarks (given, `NAME.txt`
beside a path, or a detector) -> alignment to the 224x224 crop -> coefficients from R-Net
and/or gradient fitting -> face formation and rendering (vmapped, jitted once per bucket)
-> landmarks, rendering and overlay mapped back to original-image pixels.

One bad image never stops the batch: it gets a status message and NaN results. Landmarks
that are accepted but look wrong (`jaxface.inputs.landmark_warnings`) give a result and a
message in `warnings`.
Batches are padded to a few bucket sizes so varying batch sizes reuse compiled programs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import align, cpu, paths
from jaxface.camera import Camera
from jaxface.coeffs import NUM_COEFFS, Coeffs
from jaxface.conventions import CROP_SIZE, five_from_68, flip_y
from jaxface.errors import MissingFileError
from jaxface.fit import FitConfig, fit
from jaxface.inputs import as_batch, as_rgb_u8, landmark_warnings
from jaxface.model import bfm
from jaxface.model.face_model import FaceModel
from jaxface.outputs import OK, blend_overlay
from jaxface.render import render_faces

METHODS = ("auto", "rnet", "fit", "rnet+fit")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """How `Reconstructor` works.

    method: "rnet" (network only), "fit" (gradient fitting from the mean face),
        "rnet+fit" (network, then refinement), "auto" ("rnet" when trained weights are
        present, else "fit" with a one-line notice).
    buckets: batch sizes compiled for; larger batches are split into chunks of the largest.
    fit: settings of the gradient fitting (`jaxface.fit.FitConfig`).
    refine: FitConfig used after R-Net in "rnet+fit" (a shorter schedule).
    overlay_alpha: opacity of the rendering over the photo in overlays.
    rnet_dtype: R-Net compute dtype, "float32" or "bfloat16" (bfloat16 operands, float32
        accumulation: faster where the CPU has AVX512-BF16 or AMX, or on a GPU; coefficients
        differ slightly from float32's, README "Speed" gives the measured difference); None
        keeps the weights' own (float32).
    photo_outputs: map the rendering back to photo pixels and blend the overlays
        (`image_rendered`, `image_mask`, `overlays`); False leaves them None (coefficients,
        meshes and crop renderings only).
    pin_cpu_workers: on a CPU backend, pin XLA's worker threads one per core while a batch
        runs (`jaxface.cpu.pinned`): the first call after a pause is otherwise slow on
        virtual machines. Results are the same either way.
    """

    method: str = "auto"
    buckets: tuple[int, ...] = (1, 4, 16)
    fit: FitConfig = FitConfig()
    refine: FitConfig = FitConfig(landmark_steps=20, photo_steps=60)
    overlay_alpha: float = 0.8
    rnet_dtype: str | None = None
    photo_outputs: bool = True
    pin_cpu_workers: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.buckets or any(b < 1 for b in self.buckets):
            raise ValueError(f"buckets must be positive batch sizes, got {self.buckets}")
        if self.rnet_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"rnet_dtype must be 'float32', 'bfloat16' or None, got {self.rnet_dtype!r}")


class Reconstruction(NamedTuple):
    """Results for B images (V vertices). Failed images hold NaN and say why in `status`.

    coeffs: Coeffs[B]                  the 257 coefficients
    shape: f32[B, V, 3]                canonical (unposed) shape, decimetres
    vertices: f32[B, V, 3]             posed shape (rotation + translation applied)
    colors: f32[B, V, 3]               lit vertex colours, 0-1 nominally, not clipped (as TF's face_color)
    albedo: f32[B, V, 3]               vertex albedo, 0-1
    landmarks: f32[B, 68, 2]           projected landmarks in original-image pixels (x, y down)
    crop_landmarks: f32[B, 68, 2]      the same in the 224x224 crop (x, y down)
    crop_detections: f32[B, 5, 2]      the five input landmarks after alignment, crop (x, y down; TF's lm_new)
    crops: u8[B, 224, 224, 3]          the aligned network inputs
    rendered: f32[B, 224, 224, 3]      rendered face in the crop, 0-1
    mask: f32[B, 224, 224]             rendered-face mask in the crop
    trans_params: f64[B, 5]            [W, H, scale, tx, ty] of each original image
    image_rendered: tuple[f32[H, W, 3]]  rendering in original-image pixels, per image (None: failed,
                                         or ReconstructConfig.photo_outputs=False)
    image_mask: tuple[f32[H, W]]         its mask, per image
    overlays: tuple[u8[H, W, 3]]         rendering blended over the photo, per image
    status: tuple[str]                 "ok", or why that image failed
    method: str                        the method that produced the coefficients
    model_label: str                   the morphable model (says SYNTHETIC when it is)
    warnings: tuple[str]               "" or why an "ok" result is doubtful (`jaxface.inputs`)
    """

    coeffs: Coeffs
    shape: np.ndarray
    vertices: np.ndarray
    colors: np.ndarray
    albedo: np.ndarray
    landmarks: np.ndarray
    crop_landmarks: np.ndarray
    crop_detections: np.ndarray
    crops: np.ndarray
    rendered: np.ndarray
    mask: np.ndarray
    trans_params: np.ndarray
    image_rendered: tuple
    image_mask: tuple
    overlays: tuple
    status: tuple
    method: str
    model_label: str
    warnings: tuple = ()

    @property
    def ok(self) -> np.ndarray:
        """bool[B]: which images were reconstructed."""
        return np.array([s == OK for s in self.status])


class Prepared(NamedTuple):
    """A batch loaded and aligned by `Reconstructor.prepare` (per image; None where it failed).

    photos: list of u8[H, W, 3]; aligned: list of `align.Aligned`; status: "ok" or why not;
    warnings: "" or why the landmarks look doubtful.
    """

    photos: list
    aligned: list
    status: list
    warnings: list


def bucket_size(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n (n <= max(buckets))."""
    return min(b for b in buckets if b >= n)


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to `size` by repeating the last row (results are dropped)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def default_face_model(bfm_dir=None, quiet: bool = False) -> FaceModel:
    """The user's Basel model when present, else the embedded synthetic one (with a notice)."""
    if bfm_dir is not None or bfm.bfm_available():
        return bfm.load_face_model(bfm_dir)
    from jaxface.model.synthetic import synthetic_face_model

    model = synthetic_face_model()
    if not quiet:
        print(
            f"jaxface: no Basel Face Model in {paths.bfm_dir()}; using the SYNTHETIC morphable model "
            "(results are not Basel Face Model reconstructions; see README 'Real BFM').",
            file=sys.stderr,
        )
    return model


class Reconstructor:
    """Holds the face model, R-Net weights and compiled programs; call it on batches of photos.

    model: a FaceModel (default: `default_face_model()`).
    weights: folder of converted R-Net weights, or None for `weights/rnet` when it exists.
    detector: a `jaxface.detect.Detector` for images without landmarks, or None.
    """

    def __init__(self, model: FaceModel | None = None, weights=None, config: ReconstructConfig = ReconstructConfig(),
                 detector=None, quiet: bool = False):
        self.model = model if model is not None else default_face_model(quiet=quiet)
        self.config = config
        self.detector = detector
        self.camera = Camera()
        self.rnet = None  # (variables, RNetConfig) when trained weights are present
        from jaxface.rnet import checkpoint

        where = Path(weights) if weights is not None else checkpoint.default_rnet_dir()
        mismatch = None
        if (where / checkpoint.META_NAME).is_file():
            variables, rnet_config = checkpoint.load_rnet(where)
            if config.rnet_dtype is not None:
                rnet_config = dataclasses.replace(rnet_config, dtype=config.rnet_dtype)
            self.rnet = (variables, rnet_config)
            synthetic_weights = checkpoint.trained_for_synthetic(checkpoint.weights_provenance(where))
            if synthetic_weights != self.model.synthetic:
                # Coefficients only mean something for the model the network was trained with.
                mismatch = (f"the R-Net weights in {where} were trained for "
                            f"{'the SYNTHETIC model' if synthetic_weights else 'the Basel Face Model'}, "
                            f"not for {self.model.label}")
        elif weights is not None or config.method in ("rnet", "rnet+fit"):
            raise MissingFileError(checkpoint.missing_weights_message(where))
        self.method = config.method
        if self.method == "auto":
            self.method = "rnet" if self.rnet is not None and mismatch is None else "fit"
            if self.method == "fit" and not quiet:
                why = mismatch or f"no trained R-Net weights in {where}"
                print(f"jaxface: {why}; using gradient fitting (method 'fit').", file=sys.stderr)
        elif mismatch is not None and not quiet:
            print(f"jaxface: warning: {mismatch}", file=sys.stderr)

    # ---------------------------------------------------------------- inputs

    def _prepare(self, item, lm) -> tuple[np.ndarray, np.ndarray]:
        """(image u8[H, W, 3], landmarks f32[5|68, 2] y down) for one input, or raise."""
        txt = None
        if isinstance(item, (str, os.PathLike)):
            image = align.load_image(item)
            txt = Path(item).with_suffix(".txt")
            if lm is None and txt.is_file():
                lm = align.read_landmarks(txt)
        else:
            image = as_rgb_u8(item)
        if lm is None:
            if self.detector is None and txt is not None:
                raise ValueError(f"no landmarks: expected {txt.name} beside the photo (five lines 'x y': left eye, "
                                 "right eye, nose tip, left and right mouth corner), or the face detector of "
                                 "the optional extra: pip install 'jaxface[detect]' (`jaxface detect` writes "
                                 "the .txt files)")
            if self.detector is None:
                raise ValueError("no landmarks: pass landmarks=, or install the detector (pip install "
                                 "'jaxface[detect]') and pass detector=jaxface.detect.Detector()")
            found = self.detector.detect(image)
            if not found:
                raise ValueError("no face")
            lm = found[0]
        lm = np.asarray(lm, np.float32)
        if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68) or not np.all(np.isfinite(lm)):
            raise ValueError(f"landmarks must be finite f32[5 or 68, 2] pixel coordinates, got shape {lm.shape}")
        return image, lm

    # ---------------------------------------------------------------- coefficients

    def _coefficients(self, crops: np.ndarray, lms: np.ndarray) -> Coeffs:
        """Coeffs[n] for aligned crops u8[n, 224, 224, 3] and crop landmarks f32[n, K, 2] (y down)."""
        n = len(crops)
        size = bucket_size(n, self.config.buckets)
        crops_p, lms_p = pad_batch(crops, size), pad_batch(lms, size)
        init = None
        if self.method in ("rnet", "rnet+fit"):
            from jaxface.rnet import predict

            variables, rcfg = self.rnet[0], self.rnet[1]
            init = Coeffs.from_vector(predict(variables, jnp.asarray(crops_p), rcfg))
            if self.method == "rnet":
                return jax.tree.map(lambda x: np.asarray(x)[:n], init)
        cfg = self.config.fit if self.method == "fit" else self.config.refine
        result = fit(self.model, crops_p, lms_p, init=init, config=cfg, camera=self.camera)
        return jax.tree.map(lambda x: np.asarray(x)[:n], result.coeffs)

    # ---------------------------------------------------------------- main entry

    def __call__(self, images, landmarks=None) -> Reconstruction:
        """Reconstruct a batch: `self.run(self.prepare(images, landmarks))`.

        images: u8[N, H, W, 3] or a list of arrays (any size, RGB; gray/RGBA are converted; float
            0-1) and/or paths (a 5-point `NAME.txt` beside a path is used when no landmarks are
            given); or one path or one image array [H, W(, C)].
        landmarks: f32[N, 5|68, 2] or a list (entries may be None) of pixel coordinates, y down;
            f32[5|68, 2] for a single image.
        """
        return self.run(self.prepare(images, landmarks))

    def prepare(self, images, landmarks=None) -> "Prepared":
        """Load, check and align a batch (host work only: it can run in a thread while the
        previous batch's network runs). Arguments as `__call__`."""
        items, lms_in = as_batch(images, landmarks)
        n = len(items)
        status = [OK] * n
        warnings = [""] * n
        photos: list = [None] * n
        aligned: list = [None] * n

        def load_and_align(i):
            try:
                photos[i], lm = self._prepare(items[i], lms_in[i])
                aligned[i] = align.align_image(photos[i], lm)
                warnings[i] = "; ".join(landmark_warnings(lm))
            except Exception as e:  # one bad image never stops the batch
                status[i] = f"{type(e).__name__}: {e}" if not str(e).startswith("no face") else "no face"

        # Decoding and resizing release the GIL: one thread per core roughly halves this stage.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(load_and_align, range(n)))
        return Prepared(photos, aligned, status, warnings)

    def run(self, prepared: "Prepared") -> Reconstruction:
        """Coefficients, formation, rendering and photo-pixel results of a `prepare`d batch."""
        with cpu.pinned(self.config.pin_cpu_workers):
            return self._run(prepared)

    def _run(self, prepared: "Prepared") -> Reconstruction:
        photos, aligned = prepared.photos, prepared.aligned
        status, warnings = list(prepared.status), prepared.warnings
        n = len(status)
        v = self.model.num_vertices
        out = _empty(n, v)
        good = [i for i in range(n) if status[i] == OK]
        # Fit needs one landmark count per call: group images by 5 or 68 points.
        for count in (68, 5):
            group = [i for i in good if len(aligned[i].landmarks) == count]
            for start in range(0, len(group), max(self.config.buckets)):
                idx = group[start : start + max(self.config.buckets)]
                crops = np.stack([aligned[i].image for i in idx])
                lms = np.stack([flip_y(aligned[i].landmarks) for i in idx]).astype(np.float32)
                coeffs = self._coefficients(crops, lms)
                self._fill(out, idx, coeffs, crops, [aligned[i].trans_params for i in idx])
                out["crop_detections"][idx] = lms if count == 5 else five_from_68(lms)

        image_rendered, image_mask, overlays = [], [], []

        def to_photo(i):
            if status[i] == OK and not np.all(np.isfinite(out["coeffs"][i])):
                status[i] = "fitting produced non-finite coefficients"
            if status[i] != OK or not self.config.photo_outputs:
                return None, None, None
            ren, msk = align.warp_to_image(out["rendered"][i], out["mask"][i], aligned[i].trans_params)
            return ren, msk, blend_overlay(photos[i], ren, msk, alpha=self.config.overlay_alpha)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for ren, msk, over in pool.map(to_photo, range(n)):
                image_rendered.append(ren), image_mask.append(msk), overlays.append(over)
        return Reconstruction(
            coeffs=Coeffs.from_vector(out["coeffs"]),
            shape=out["shape"], vertices=out["vertices"], colors=out["colors"], albedo=out["albedo"],
            landmarks=out["landmarks"], crop_landmarks=out["crop_landmarks"],
            crop_detections=out["crop_detections"], crops=out["crops"],
            rendered=out["rendered"], mask=out["mask"], trans_params=out["trans_params"],
            image_rendered=tuple(image_rendered), image_mask=tuple(image_mask), overlays=tuple(overlays),
            status=tuple(status), method=self.method, model_label=self.model.label,
            warnings=tuple(w if st == OK else "" for w, st in zip(warnings, status)),
        )

    def _fill(self, out: dict, idx: list[int], coeffs: Coeffs, crops: np.ndarray, trans: list) -> None:
        """Face formation + rendering for one chunk, written into the batch arrays at `idx`."""
        n = len(idx)
        size = bucket_size(n, self.config.buckets)
        padded = jax.tree.map(lambda x: jnp.asarray(pad_batch(np.asarray(x), size)), coeffs)
        face, out_r = render_faces(self.model, padded, self.camera)
        face = jax.tree.map(lambda x: np.asarray(x)[:n], face)
        rendered, mask = np.asarray(out_r.image)[:n], np.asarray(out_r.mask)[:n]
        for k, i in enumerate(idx):
            out["coeffs"][i] = np.asarray(jax.tree.map(lambda x: x[k], coeffs).to_vector())
            out["shape"][i], out["vertices"][i] = face.shape[k], face.vertices[k]
            out["colors"][i], out["albedo"][i] = face.colors[k], face.albedo[k]
            out["crop_landmarks"][i] = flip_y(face.landmarks[k])
            out["landmarks"][i] = align.crop_to_image_points(face.landmarks[k], trans[k])
            out["crops"][i], out["rendered"][i], out["mask"][i] = crops[k], rendered[k], mask[k]
            out["trans_params"][i] = trans[k]


def _empty(n: int, v: int) -> dict:
    nan = np.float32(np.nan)
    return {
        "coeffs": np.full((n, NUM_COEFFS), nan, np.float32),
        "shape": np.full((n, v, 3), nan, np.float32),
        "vertices": np.full((n, v, 3), nan, np.float32),
        "colors": np.full((n, v, 3), nan, np.float32),
        "albedo": np.full((n, v, 3), nan, np.float32),
        "landmarks": np.full((n, 68, 2), nan, np.float32),
        "crop_landmarks": np.full((n, 68, 2), nan, np.float32),
        "crop_detections": np.full((n, 5, 2), nan, np.float32),
        "crops": np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8),
        "rendered": np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.float32),
        "mask": np.zeros((n, CROP_SIZE, CROP_SIZE), np.float32),
        "trans_params": np.full((n, 5), np.nan, np.float64),
    }


def reconstruct(images, landmarks=None, *, model: FaceModel | None = None, weights=None,
                config: ReconstructConfig = ReconstructConfig(), detector=None) -> Reconstruction:
    """One-shot `Reconstructor(model, weights, config, detector)(images, landmarks)`.

    For many batches, build a `Reconstructor` once and call it repeatedly.
    """
    return Reconstructor(model, weights, config, detector)(images, landmarks)
