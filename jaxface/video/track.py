"""`reconstruct_video(frames, landmarks)`: one identity for the clip, smooth per-frame motion.

1. Landmarks and steady crops per frame (`video.frames.align_clip`).
2. Starting point per frame: R-Net (method "rnet", batches of `batch`), or the mean face at
   the closed-form pose of the frame's landmarks (method "fit").
3. Identity: `fit_set` on `identity_frames` frames spread over the clip: one id and tex.
4. Tracking: windows of `window` frames, each overlapping the previous by `overlap`, fitted
   by `fit` with id and tex frozen at the clip's identity and the temporal prior
   (`FitConfig.temporal`: second differences of exp, angle, gamma, trans) coupling the frames;
   the last window is padded with empty frames, so every call has one shape (one compile, and
   memory does not grow with the clip). Overlaps are blended with linear ramps; each window
   starts from the previous one's results where they overlap.
5. Frames without a usable face get their coefficients (and crop geometry) by linear
   interpolation of the nearest tracked frames (status INTERPOLATED, with the reason).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import flip_y
from jaxface.fit import FitConfig, TemporalWeights, fit, fit_set
from jaxface.fit.init import closed_form_pose
from jaxface.formation import keypoint_landmarks
from jaxface.model.face_model import FaceModel
from jaxface.video.frames import align_clip, to_frame

TRACKED, INTERPOLATED = 0, 1  # VideoResult.status
METHODS = ("auto", "rnet", "fit")
MOTION = ("exp", "angle", "gamma", "trans")  # the per-frame groups


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """How `reconstruct_video` works. Window, identity and batch sizes fix the compiled programs.

    method: "rnet" (R-Net per frame, then refinement), "fit" (refinement from the mean face),
        "auto" ("rnet" when trained weights for the model are present, as `Reconstructor`).
    window, overlap: frames per tracking window and frames shared by consecutive windows.
    identity_frames: frames (spread over the clip) that `fit_set` estimates the identity from.
    batch: frames per R-Net call and per rendering call.
    align_smoothing: crops use five points averaged over +-this many frames (0: per frame).
    identity, track: FitConfigs of steps 3 and 4 for method "fit"; rnet_identity, rnet_track
        for method "rnet" (shorter: R-Net starts close). Tracking always freezes id and tex;
        its `temporal` weights are the smoothness prior (None: frames are not coupled).
    overlay_alpha: opacity of the rendering over the frames in overlays.
    """

    method: str = "auto"
    window: int = 16
    overlap: int = 4
    identity_frames: int = 16
    batch: int = 16
    align_smoothing: int = 5
    identity: FitConfig = FitConfig(landmark_steps=100, photo_steps=200)
    track: FitConfig = FitConfig(landmark_steps=150, photo_steps=30, temporal=TemporalWeights())
    rnet_identity: FitConfig = FitConfig(landmark_steps=20, photo_steps=20)
    rnet_track: FitConfig = FitConfig(landmark_steps=30, photo_steps=0, temporal=TemporalWeights())
    overlay_alpha: float = 0.8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= self.overlap < self.window or self.window < 3:
            raise ValueError(f"need window >= 3 and 0 <= overlap < window, got {self.window}, {self.overlap}")
        if min(self.identity_frames, self.batch) < 1 or self.align_smoothing < 0:
            raise ValueError("identity_frames and batch must be >= 1, align_smoothing >= 0")

    def landmark_only(self) -> "VideoConfig":
        """This configuration without the photometric stages (fast; shape and light coarser)."""
        drop = lambda c: dataclasses.replace(c, photo_steps=0)  # noqa: E731
        return dataclasses.replace(self, identity=drop(self.identity), track=drop(self.track),
                                   rnet_identity=drop(self.rnet_identity), rnet_track=drop(self.rnet_track))


class VideoResult(NamedTuple):
    """Results for F frames.

    coeffs: Coeffs[F]           per frame; id and tex are the clip's identity in every frame
    status: i32[F]              TRACKED, or INTERPOLATED (no usable face: filled from neighbours)
    reasons: tuple[str]         "ok", or why the frame had no usable face
    landmarks: f32[F, 68, 2]    projected landmarks in frame pixels (x right, y down)
    trans_params: f64[F, 5]     crop geometry per frame (`video.frames`; interpolated frames too)
    identity: Coeffs            one face: the clip's id and tex, neutral (exp, angle, trans 0),
                                the mean light of the tracked frames
    crops: u8[F, 224, 224, 3]   the aligned crops (black where no face)
    size: (H, W)                frame size
    method: str; model_label: str
    """

    coeffs: Coeffs
    status: np.ndarray
    reasons: tuple
    landmarks: np.ndarray
    trans_params: np.ndarray
    identity: Coeffs
    crops: np.ndarray
    size: tuple
    method: str
    model_label: str


def windows(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start of each tracking window: 0, stride, 2 stride, ... until the clip's end is covered."""
    stride = window - overlap
    return list(range(0, max(num_frames - overlap, 1), stride))


def blend_weights(window: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """f64[window]: linear ramps over the overlaps (none at the clip's ends); consecutive
    windows' weights sum to 1 on the frames they share."""
    w = np.ones(window)
    ramp = np.arange(1, overlap + 1) / (overlap + 1)
    if not first:
        w[:overlap] = ramp
    if not last:
        w[window - overlap:] = ramp[::-1]
    return w


def interpolate_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values f[F, n] with rows where not `valid` replaced by linear interpolation over time of
    the valid rows (the nearest valid row before the first / after the last)."""
    t = np.arange(len(values))
    out = np.array(values, np.float64)
    for j in range(out.shape[1]):
        out[~valid, j] = np.interp(t[~valid], t[valid], out[valid, j])
    return out.astype(values.dtype)


def spread(positions: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` of `positions`, evenly spaced (all of them when there are fewer)."""
    if len(positions) <= count:
        return positions
    return positions[np.round(np.linspace(0, len(positions) - 1, count)).astype(int)]


@partial(jax.jit, static_argnums=2)
def _poses(model, targets, camera):
    return jax.vmap(lambda t: closed_form_pose(model, t, camera))(targets)


@partial(jax.jit, static_argnums=2)
def _landmarks(model, coeffs, camera):
    return jax.vmap(keypoint_landmarks, in_axes=(None, 0, None))(model, coeffs, camera)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        idx = np.arange(start, start + size)
        yield idx[idx < n], idx.clip(max=n - 1)  # real positions, padded positions (repeat the last)


def _take(coeffs: Coeffs, idx) -> Coeffs:
    return Coeffs(*(np.asarray(x)[idx] for x in coeffs))


def _initial(recon, clip, batch: int, camera: Camera, bar) -> Coeffs:
    """Coeffs[F] (numpy) to start from: R-Net, or the mean face at each frame's closed-form pose."""
    n = len(clip.crops)
    first = np.flatnonzero(clip.valid)[0]
    out = np.zeros((n, 257), np.float32)
    for real, idx in _chunks(n, batch):
        if recon.method == "rnet":
            from jaxface.rnet import predict

            variables, rcfg = recon.rnet
            vec = np.asarray(predict(variables, jnp.asarray(clip.crops[idx]), rcfg))
        else:
            lm = np.where(clip.valid[idx, None, None], clip.landmarks[idx], clip.landmarks[first])  # finite stand-ins
            angle, trans = (np.asarray(x) for x in _poses(recon.model, flip_y(lm), camera))
            vec = np.asarray(Coeffs.zeros((len(idx),))._replace(angle=angle, trans=trans).to_vector())
        out[real] = vec[: len(real)]
        if bar is not None:
            bar.update(len(real))
    ok = clip.valid[:, None] & np.isfinite(out).all(axis=1, keepdims=True)
    return Coeffs.from_vector(np.where(ok, out, 0.0).astype(np.float32))


def _identity(model, clip, init: Coeffs, config: VideoConfig, cfg: FitConfig, camera):
    """(id f32[80], tex f32[80]) from `fit_set` on frames spread over the clip (fixed count)."""
    k = config.identity_frames
    sel = spread(np.flatnonzero(clip.valid), k)
    idx = np.concatenate([sel, np.full(k - len(sel), sel[0])])
    lms = clip.landmarks[idx].copy()
    lms[len(sel):] = np.nan  # padding frames count as bad input: they do not contribute
    res = fit_set(model, clip.crops[idx], lms, init=_take(init, idx), config=cfg, camera=camera)
    return np.asarray(res.coeffs.id[0]), np.asarray(res.coeffs.tex[0])


def _track(model, clip, init: Coeffs, ident, tex, config: VideoConfig, cfg: FitConfig, camera, bar) -> np.ndarray:
    """f32[F, 257]: windows fitted with id/tex frozen and the temporal prior, blended."""
    cfg = dataclasses.replace(cfg, freeze=tuple(sorted(set(cfg.freeze) | {"id", "tex"})))
    n, w = len(clip.crops), config.window
    start_vec = np.asarray(init._replace(id=np.broadcast_to(ident, (n, 80)), tex=np.broadcast_to(tex, (n, 80)))
                           .to_vector(), np.float32)
    acc = np.zeros((n, 257))
    wsum = np.zeros(n)
    starts = windows(n, w, config.overlap)
    previous = None  # the last window's output, as f32[W, 257], and its start
    covered = 0
    for k, s in enumerate(starts):
        pos = np.arange(s, s + w)
        real = pos < n
        idx = np.minimum(pos, n - 1)
        vec = start_vec[idx].copy()
        if previous is not None:  # start the overlap where the previous window ended up
            out_prev, s_prev = previous
            shared = pos[pos < s_prev + w]
            vec[: len(shared)] = out_prev[shared - s_prev]
        lms = clip.landmarks[idx].copy()
        lms[~real] = np.nan
        res = fit(model, clip.crops[idx], lms, init=Coeffs.from_vector(vec), config=cfg, camera=camera)
        out = np.asarray(res.coeffs.to_vector(), np.float64)
        weight = blend_weights(w, config.overlap, k == 0, k == len(starts) - 1)[real]
        acc[pos[real]] += weight[:, None] * out[real]
        wsum[pos[real]] += weight
        previous = (out.astype(np.float32), s)
        if bar is not None:
            bar.update(int(min(s + w, n) - covered))
        covered = min(s + w, n)
    return (acc / wsum[:, None]).astype(np.float32)


def reconstruct_video(frames, landmarks=None, *, model: FaceModel | None = None, weights=None,
                      config: VideoConfig = VideoConfig(), detector=None, progress: bool = False,
                      quiet: bool = False) -> VideoResult:
    """Reconstruct a clip with one identity and smooth per-frame motion (module docstring).

    frames: u8[F, H, W, 3] RGB, or an iterable of RGB u8[H, W, 3] frames (e.g. from
        `jaxface.video.iter_frames`; read once, only crops are kept)
    landmarks: f[F, 5|68, 2] pixels, y down, NaN rows for frames without a face (or a sequence
        with None entries); None: `detector` finds them (`jaxface.detect.Detector`)
    model, weights: as for `jaxface.Reconstructor` (which decides the method for "auto").
    progress: tqdm bars (frames/s) per stage on stderr.
    """
    from tqdm import tqdm

    from jaxface.reconstruct import ReconstructConfig, Reconstructor

    recon = Reconstructor(model, weights, ReconstructConfig(method=config.method), quiet=quiet)
    model, camera = recon.model, recon.camera
    total = len(frames) if hasattr(frames, "__len__") else None

    def bar(desc, n=total):
        return tqdm(total=n, desc=desc, unit="frame", disable=not progress, leave=True, dynamic_ncols=True)

    with bar("align") as b:
        clip = align_clip(frames, landmarks, detector, config.align_smoothing, config.batch, b)
    n = len(clip.crops)
    if not clip.valid.any():
        first = next((r for r in clip.reasons if r != "ok"), "")
        raise ValueError(f"no usable face in any of the {n} frames (first reason: {first}); check the landmarks "
                         "or the detector")
    rnet = recon.method == "rnet"
    with bar("R-Net" if rnet else "initial pose", n) as b:
        init = _initial(recon, clip, config.batch, camera, b)
    ident, tex = _identity(model, clip, init, config, config.rnet_identity if rnet else config.identity, camera)
    with bar("track", n) as b:
        vec = _track(model, clip, init, ident, tex, config, config.rnet_track if rnet else config.track, camera, b)
    tracked = clip.valid & np.isfinite(vec).all(axis=1)
    if not tracked.any():
        raise ValueError(f"fitting produced non-finite coefficients for all {n} frames; check the landmarks")
    reasons = tuple(r if r != "ok" or tracked[i] else "fitting produced non-finite coefficients"
                    for i, r in enumerate(clip.reasons))
    vec = interpolate_missing(np.where(tracked[:, None], vec, 0.0), tracked)
    trans_params = clip.trans_params.copy()
    trans_params[:, :2] = clip.size[::-1]
    trans_params[:, 2:] = interpolate_missing(trans_params[:, 2:], tracked)
    coeffs = Coeffs.from_vector(vec)

    lm = np.zeros((n, 68, 2), np.float32)
    for real, idx in _chunks(n, config.batch):
        crop_lm = np.asarray(_landmarks(model, _take(coeffs, idx), camera))[: len(real)]
        lm[real] = [to_frame(flip_y(p), trans_params[i]) for p, i in zip(crop_lm, real)]
    identity = Coeffs.zeros()._replace(id=jnp.asarray(ident), tex=jnp.asarray(tex),
                                       gamma=jnp.asarray(coeffs.gamma[tracked].mean(axis=0)))
    status = np.where(tracked, TRACKED, INTERPOLATED).astype(np.int32)
    return VideoResult(coeffs, status, reasons, lm, trans_params, identity, clip.crops, clip.size, recon.method,
                       model.label)
