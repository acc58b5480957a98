"""Image alignment of the references: 5 points -> scale + translation -> 224x224 crop.

Conventions (both references, SPEC "Image alignment"):
- Detections are pixel coordinates, y pointing down, order left eye, right eye, nose tip,
  left mouth corner, right mouth corner. They are flipped to y-up (y' = H - 1 - y) before
  a least-squares fit of scale s and translation t mapping the template's x, y, z onto them.
- The image is resized by `scale = 102 / s` to (int(W*scale), int(H*scale)) with PIL's
  BICUBIC filter and cropped 224x224 around t (outside the image: black).
- `trans_params = [W, H, scale, tx, ty]` (t in y-up coordinates) maps results back.
- Landmarks in the crop are returned, like the PyTorch reference's `lm_new`, in y-up crop
  coordinates (v pointing up, the camera's convention; row = 223 - v). The TF reference
  returns 223 - v instead; both fit the same crop.

Resampling: PIL is not a dependency, so `resize_crop` re-implements Pillow's
`Image.resize(..., BICUBIC)` for 8-bit images (antialiasing support scaled by the
downscale factor, a = -0.5, 22-bit fixed-point coefficients, horizontal then vertical pass
with an 8-bit intermediate, each pass a sparse band product exact in float64); it
reproduces Pillow bit for bit and only computes the 224x224 window that the crop keeps.
cv2.INTER_CUBIC would differ (no antialiasing when shrinking).
Pillow >= 13 runs the vertical pass first when the height shrinks much more than the width;
alignment scales both axes alike, where all Pillow versions agree with this code.
The landmark math follows the reference operation for operation (float32 flip, float64 fit).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import sparse

from jaxface.conventions import CROP_SIZE, five_from_68
from jaxface.fileio import checked_file
from jaxface.paths import index_file

RESCALE_FACTOR = 102.0
MAX_PIXELS = 100_000_000  # larger photos are rejected before decoding
MAX_FILE_BYTES = 1 << 30
_PIL_PRECISION_BITS = 32 - 8 - 2


class Aligned(NamedTuple):
    """One aligned face.

    image: u8[224, 224, 3]     RGB crop, the network input
    landmarks: f64[N, 2]       the input points in the crop, y-up (v) like the reference's lm_new
    trans_params: f64[5]       [W, H, scale, tx, ty] of the original image
    """

    image: np.ndarray
    landmarks: np.ndarray
    trans_params: np.ndarray


# ----------------------------------------------------------------------------- template

def load_template(path: str | os.PathLike | None = None) -> np.ndarray:
    """The 5 template points f32[5, 3] from `similarity_Lm3D_all.mat` (`lm`, 68x3)."""
    from scipy.io import loadmat

    path = Path(path) if path is not None else index_file("similarity_Lm3D_all.mat")
    lm = loadmat(path).get("lm")
    if lm is None or lm.shape != (68, 3):
        raise ValueError(f"{path}: expected a 68x3 array 'lm' (similarity_Lm3D_all.mat of the references)")
    return five_from_68(lm)


# ----------------------------------------------------------------------------- inputs

def read_landmarks(path: str | os.PathLike) -> np.ndarray:
    """Five detections f32[5, 2] (x, y pixels, y down) from a reference `.txt` (lines `x y`).

    68-point files are reduced to the 5 points with the template rule (`five_from_68`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file {path} not found; expected five lines 'x y' "
                                "(left eye, right eye, nose tip, left mouth corner, right mouth corner)")
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"{path} is {path.stat().st_size} bytes; a 5-point landmark file has five short lines")
    values = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for tok in line.replace(",", " ").split():
            try:
                values.append(float(tok))
            except ValueError:
                raise ValueError(f"{path}, line {n}: {tok!r} is not a number; expected lines 'x y'") from None
    if len(values) not in (10, 136):
        raise ValueError(f"{path} holds {len(values)} numbers; expected 5 points (five lines 'x y'), "
                         "or 68 points")
    lm = np.asarray(values, np.float32).reshape(-1, 2)
    if not np.isfinite(lm).all():
        raise ValueError(f"{path} contains NaN or infinite coordinates: {lm.tolist()}")
    return lm if len(lm) == 5 else five_from_68(lm)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG / JPEG / BMP header, or None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """A photo as u8[H, W, 3] RGB, like the references' `Image.open(path).convert('RGB')`.

    Grayscale is replicated to three channels, alpha is dropped (not composited, as PIL's
    convert does), 16-bit is rounded to 8-bit. The EXIF orientation tag is applied (OpenCV's
    decoder does it unless asked for the raw data), so phone photos come out upright, as a
    viewer shows them, and `NAME.txt` landmarks refer to those upright pixels; the references'
    `Image.open` ignores the tag. Photos over 100 megapixels are rejected from their header,
    before decoding.
    """
    import cv2

    path = checked_file(path, "image", MAX_FILE_BYTES)
    data = path.read_bytes()
    dims = _header_size(data)
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        raise ValueError(f"image {path} is {dims[0]}x{dims[1]} pixels, over the {MAX_PIXELS // 10**6} MP limit; "
                         "downscale it (and its landmarks) first")
    # ANYDEPTH keeps 16-bit, ANYCOLOR keeps gray; unlike IMREAD_UNCHANGED they apply EXIF
    # orientation (alpha, which they drop, is dropped below anyway).
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None or img.size == 0:
        raise ValueError(f"image {path} could not be decoded (corrupt, truncated or an unsupported format)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ValueError(f"image {path} is {img.shape[1]}x{img.shape[0]} pixels, over the "
                         f"{MAX_PIXELS // 10**6} MP limit; downscale it (and its landmarks) first")
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"image {path} has {img.dtype} pixels; convert it to 8- or 16-bit RGB")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(img[:, :, 2::-1])
    raise ValueError(f"image {path} has {channels} channels; expected gray, RGB or RGBA")


# ----------------------------------------------------------------------------- alignment math

def fit_scale_translation(points_yup: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares x = s R X + t with an unconstrained 2x3 `sR` (the reference `POS`).

    points_yup: f[5, 2] detections, y up.  template: f[5, 3].
    Returns t f64[2] and s = mean row norm of the fitted 2x3 matrix.
    """
    n = len(points_yup)
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3] = template
    a[0::2, 3] = 1
    a[1::2, 4:7] = template
    a[1::2, 7] = 1
    b = np.reshape(points_yup, (2 * n, 1)).astype(np.float64)
    k = np.linalg.lstsq(a, b, rcond=None)[0][:, 0]
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.array([k[3], k[7]]), float(s)


def _check_points(points: np.ndarray, width: int, height: int) -> None:
    if not np.isfinite(points).all():
        raise ValueError(f"landmarks contain NaN or infinite values: {points.tolist()}")
    if min(width, height) > 8 and np.abs(points).max() <= 1.5:
        raise ValueError(f"landmarks {points[:5].tolist()} look like fractions of the image size (all within "
                         f"0-1.5); expected pixel coordinates of this {width}x{height} image (x times the "
                         "width, y times the height)")
    margin = 0.25 * max(width, height)
    outside = (points[:, 0] < -margin) | (points[:, 0] > width - 1 + margin) | \
              (points[:, 1] < -margin) | (points[:, 1] > height - 1 + margin)
    if outside.any():
        raise ValueError(
            f"landmarks {points[outside].tolist()} lie outside the {width}x{height} image; expected pixel "
            "coordinates (x right, y down) of this image, not normalised or swapped ones")
    centred = points[:5] - points[:5].mean(0)
    sv = np.linalg.svd(centred.astype(np.float64), compute_uv=False)
    if sv[0] < 1.0:
        raise ValueError(f"the 5 landmarks coincide ({points[:5].tolist()}); expected eyes, nose and mouth "
                         "corners at distinct pixels")
    if sv[1] < 0.02 * sv[0]:
        raise ValueError(f"the 5 landmarks are (nearly) collinear ({points[:5].tolist()}); eyes, nose and "
                         "mouth corners cannot lie on one line")


def _crop_geometry(trans_params: np.ndarray, target_size: float = CROP_SIZE):
    """(w, h, left, up) of the resized image and crop box, exactly as the reference computes them."""
    w0, h0, s, tx, ty = (float(v) for v in trans_params)
    w = np.int32(w0 * s)
    h = np.int32(h0 * s)
    left = np.int32(w / 2 - target_size / 2 + (tx - w0 / 2) * s)
    up = np.int32(h / 2 - target_size / 2 + (h0 / 2 - ty) * s)
    return int(w), int(h), int(left), int(up)


def image_to_crop_points(points: np.ndarray, trans_params: np.ndarray, target_size: float = CROP_SIZE) -> np.ndarray:
    """Original-image pixels f[..., 2] (y down) -> crop coordinates f64[..., 2] (y up, the reference's lm_new)."""
    w0, h0, s, tx, ty = (float(v) for v in trans_params)
    w, h, _, _ = _crop_geometry(trans_params, target_size)
    p = np.asarray(points, np.float32)
    # the reference flips in float32, then continues in float64
    x, y_up = p[..., 0].astype(np.float64), (np.float32(h0 - 1) - p[..., 1]).astype(np.float64)
    return np.stack([(x - tx + w0 / 2) * s - (w / 2 - target_size / 2),
                     (y_up - ty + h0 / 2) * s - (h / 2 - target_size / 2)], axis=-1)


def crop_to_image_points(points: np.ndarray, trans_params: np.ndarray, target_size: float = CROP_SIZE) -> np.ndarray:
    """Crop coordinates f[..., 2] (y up: projected landmarks / mesh vertices) -> original-image
    pixels f64[..., 2] (y down). Exact inverse of `image_to_crop_points`."""
    w0, h0, s, tx, ty = (float(v) for v in trans_params)
    w, h, _, _ = _crop_geometry(trans_params, target_size)
    p = np.asarray(points, np.float64)
    x = (p[..., 0] + (w / 2 - target_size / 2)) / s + tx - w0 / 2
    y_up = (p[..., 1] + (h / 2 - target_size / 2)) / s + ty - h0 / 2
    return np.stack([x, (h0 - 1) - y_up], axis=-1)


# ----------------------------------------------------------------------------- resampling

def _pil_bicubic_coeffs(in_size: int, out_size: int, out_lo: int, out_hi: int):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for outputs [out_lo, out_hi).

    Returns xmin i64[n], fixed-point weights i64[n, ksize] (zero past each window)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_lo, out_hi) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    x = np.arange(ksize)
    d = np.abs(((x[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    a = -0.5
    w = np.where(d < 1.0, ((a + 2.0) * d - (a + 3.0)) * d * d + 1,
                 np.where(d < 2.0, (((d - 5) * d + 8) * d - 4) * a, 0.0))
    w = np.where(x[None, :] < xmax[:, None], w, 0.0)
    total = np.zeros(len(center))
    for j in range(ksize):  # sequential like Pillow's loop (numpy's sum is pairwise)
        total = total + w[:, j]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    one = 1 << _PIL_PRECISION_BITS
    fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int64)
    return xmin, fixed


def _pil_pass(src: np.ndarray, xmin: np.ndarray, k: np.ndarray) -> np.ndarray:
    """One 8-bit resampling pass along axis 0 of u8[N, ...] with Pillow's rounding.

    The pass is a banded matrix product: the fixed-point weights times 8-bit pixels are
    integers below 2**53, so a float64 sparse product gives Pillow's integer sums exactly
    (its cost scales with the taps, not with the source size as a dense product would).
    """
    n_out, taps = k.shape
    cols = np.minimum(xmin[:, None] + np.arange(taps), src.shape[0] - 1)  # past the window the weight is 0
    band = sparse.csr_matrix(
        (k.ravel().astype(np.float64), cols.ravel(), np.arange(0, n_out * taps + 1, taps)),
        shape=(n_out, src.shape[0]),
    )
    acc = band @ src.reshape(src.shape[0], -1).astype(np.float64)
    acc = np.floor((acc + (1 << (_PIL_PRECISION_BITS - 1))) * (1.0 / (1 << _PIL_PRECISION_BITS)))
    return np.clip(acc, 0, 255).astype(np.uint8).reshape(n_out, *src.shape[1:])  # Pillow's clip8


def resize_crop(image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """PIL `image.resize(size, BICUBIC).crop(box)` for u8[H, W, C], computing only the box.

    size: (w, h) of the resized image. box: (left, up, right, below), may exceed it (black).
    Horizontal pass first, then vertical, as Pillow before 13 always does (the references').
    """
    import cv2

    h0, w0 = image.shape[:2]
    w, h = size
    left, up, right, below = box
    out = np.zeros((below - up, right - left, image.shape[2]), np.uint8)
    x_lo, x_hi, y_lo, y_hi = max(left, 0), min(right, w), max(up, 0), min(below, h)
    if x_lo >= x_hi or y_lo >= y_hi:
        return out
    ymin, ky = _pil_bicubic_coeffs(h0, h, y_lo, y_hi)
    xmin, kx = _pil_bicubic_coeffs(w0, w, x_lo, x_hi)
    rows_lo = int(ymin.min())
    rows_hi = int(min(ymin.max() + ky.shape[1], h0))
    cols_lo = int(xmin.min())
    cols_hi = int(min(xmin.max() + kx.shape[1], w0))
    # cv2.transpose swaps rows and columns of a multi-channel image far faster than numpy's copy.
    src = cv2.transpose(np.ascontiguousarray(image[rows_lo:rows_hi, cols_lo:cols_hi]))  # [cols, rows, C]
    tmp = cv2.transpose(_pil_pass(src, xmin - cols_lo, kx))  # [rows, out cols, C]
    out[y_lo - up:y_hi - up, x_lo - left:x_hi - left] = _pil_pass(tmp, ymin - rows_lo, ky)
    return out


# ----------------------------------------------------------------------------- public

def align_image(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: np.ndarray | None = None,
    target_size: int = CROP_SIZE,
    rescale_factor: float = RESCALE_FACTOR,
) -> Aligned:
    """Align a photo like both references' `align_img`.

    image: u8[H, W, 3] RGB (see `load_image`).
    landmarks: f[5, 2] or f[68, 2] detections, pixels, y down (68 points: the 5 are derived
        with the template rule, and all 68 are mapped into the crop).
    template: f[5, 3] (default: from similarity_Lm3D_all.mat via `load_template`).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"align_image expects an RGB u8[H, W, 3] image (see jaxface.align.load_image), "
                         f"got {image.dtype}{list(image.shape)}")
    h0, w0 = image.shape[:2]
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68):
        raise ValueError(f"landmarks must have shape (5, 2) or (68, 2) (x, y pixels), got {lm.shape}")
    _check_points(lm if len(lm) == 5 else five_from_68(lm), w0, h0)
    if template is None:
        template = load_template()
    template = np.asarray(template)
    if template.shape != (5, 3):
        raise ValueError(f"template must be f[5, 3] (see load_template), got {template.shape}")

    lm_up = np.stack([lm[:, 0], np.float32(h0 - 1) - lm[:, 1]], axis=1)  # flip before averaging, as the reference
    t, s_fit = fit_scale_translation(lm_up if len(lm) == 5 else five_from_68(lm_up), template)
    scale = rescale_factor / s_fit
    trans_params = np.array([w0, h0, scale, t[0], t[1]], np.float64)
    if not np.isfinite(scale) or not 1 <= w0 * scale < 2**31 or not 1 <= h0 * scale < 2**31:
        raise ValueError(f"the landmarks give an unusable scale {scale:g} for a {w0}x{h0} image; "
                         "check that they are this image's eyes, nose and mouth corners")
    w, h, left, up = _crop_geometry(trans_params, target_size)
    crop = resize_crop(image, (w, h), (left, up, left + target_size, up + target_size))
    return Aligned(crop, image_to_crop_points(lm, trans_params, target_size), trans_params)


def warp_to_image(
    rendering: np.ndarray, mask: np.ndarray, trans_params: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map a crop-sized rendering f[224, 224, C] and mask f[224, 224] (rows top-down, like the
    crop image) back onto the original image: (f32[H, W, C], f32[H, W]), zero outside.

    Uses the pixel geometry of the crop itself (the integer crop box and the resize's pixel
    centres), so an overlay lines up with the photo the network saw.
    """
    import cv2

    rendering = np.asarray(rendering, np.float32)
    mask = np.asarray(mask, np.float32)
    if rendering.ndim != 3 or mask.shape != rendering.shape[:2] or rendering.shape[0] != rendering.shape[1]:
        raise ValueError(f"expected a square rendering f[S, S, C] and mask f[S, S], got {rendering.shape} "
                         f"and {mask.shape}")
    size = rendering.shape[0]
    w0, h0 = int(trans_params[0]), int(trans_params[1])
    w, h, left, up = _crop_geometry(trans_params, size)
    # original pixel (x, y) -> crop pixel (c, r): resized pixel centres are at (X + 0.5) * W / w
    m = np.array([[w / w0, 0, 0.5 * w / w0 - 0.5 - left],
                  [0, h / h0, 0.5 * h / h0 - 0.5 - up]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = np.stack([cv2.warpAffine(rendering[:, :, c], m, (w0, h0), flags=flags, borderValue=0.0)
                    for c in range(rendering.shape[2])], axis=-1)
    out_mask = cv2.warpAffine(mask, m, (w0, h0), flags=flags, borderValue=0.0)
    return out, out_mask
