"""Per-image gradient refinement of coefficients (analysis by synthesis), and image-set fitting.

`fit` optimizes each image's 257 coefficients independently (one batched program, one
compile per input shape and `FitConfig` structure). `fit_set` fits ONE identity and albedo
(id, tex) shared by B photos of one person, with per-photo expression, pose, light and
translation.

Stages (SPEC "Training losses" weights, `LossWeights`):
0. Initialization (when no `init` is given): the mean face, frontal light, and a closed-form
   pose from the landmarks (`fit.init.closed_form_pose`).
1. Landmark stage (`landmark_steps`): `landmark_groups` (default pose + id + exp) from
   landmark loss + priors, on the 68 keypoint vertices only (cheap). With 5-point
   landmarks only the pose (angle, trans) of `landmark_groups` is optimized here.
2. Light: gamma by linear least squares at the photometric region's pixels.
3. Photometric stage (`photo_steps`): every non-frozen group from photometric + landmark
   + priors, over the rendered photometric region (`FaceModel.region_triangles`), so the
   background does not matter. The z-buffer is refreshed every `raster_every` steps; in
   between, colours and barycentrics are re-interpolated from the current vertices for
   the fixed triangle ids (the renderer's gradient path) at up to `photo_fraction` of the
   crop's pixels, on the region's vertices only (`jaxface.fit.objective`). With an
   `identity` (`jaxface.identity.load_identity`), the perceptual term of the paper joins it:
   1 - cosine of the frozen network's embeddings of the photo and of the region's rendering
   composited over it (every pixel, each step; costs a network forward and backward per step).

Adam per coefficient group with its own learning rate and a cosine decay to 10 % per stage
(`fit.loop.stage_optimizer`). Frozen groups get exactly zero updates. Per image: inputs
with non-finite values are flagged `BAD_INPUT` and left at their initialization without
touching the rest of the batch; steps with a non-finite loss or gradient are skipped
(`NONFINITE`); the best iterate of the last stage is returned.

Landmarks: f32[B, 68, 2] (the 68-point layout) or f32[B, 5, 2] (`jaxface.conventions`),
top-down crop pixels.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxface.camera import Camera
from jaxface.coeffs import Coeffs
from jaxface.conventions import flip_y
from jaxface.fit.loop import BAD_INPUT, GROUPS, Hyper, Static, fit_jit
from jaxface.fit.objective import face_terms
from jaxface.identity.loss import Identity
from jaxface.losses import LossWeights, coeff_prior, objective
from jaxface.model.face_model import FaceModel
from jaxface.model.region import photo_region, point_buf_is_complete
from jaxface.render import render


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LearningRates:
    """Adam step sizes per coefficient group (coefficient units per step, before decay)."""

    id: float = 0.1
    exp: float = 0.1
    tex: float = 0.1
    angle: float = 0.01
    gamma: float = 0.01
    trans: float = 0.005


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TemporalWeights:
    """Weights of the smoothness prior over frames in time order (`losses.second_difference`
    of each group's coefficients), for video. Units: the prior adds w * |x[t+1] - 2x[t] + x[t-1]|^2
    (angles in radians, translation in decimetres; the landmark loss weighs 1.6e-3 per px^2).
    The defaults were tuned with benchmarks/video.py on a 25 fps clip: the jitter fell, and the
    landmark error against the truth with it, until stronger weights began to lag the motion."""

    exp: float = 0.03
    angle: float = 10.0
    gamma: float = 1e-2
    trans: float = 50.0


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Refinement settings. Step counts, `raster_every`, `photo_fraction`, the groups
    (`landmark_groups`, `freeze`) and `camera` fix the compiled program; rates, weights and
    `light_ridge` are data (changing them does not recompile).

    landmark_steps: stage 1 steps (landmark loss on keypoints only)
    photo_steps: stage 3 steps (render + photometric); 0 gives a landmark-only fit
    raster_every: photometric steps between z-buffer refreshes; must divide photo_steps
    landmark_groups: groups optimized in stage 1 (pose + shape by default)
    freeze: groups never changed, e.g. ("id", "tex") to refine expression with a known identity
    light_init: solve gamma in closed form before stage 3 (skipped when gamma is frozen)
    temporal: None, or `TemporalWeights`: the batch is a sequence of frames in time order and
        a smoothness prior on expression, pose, light and translation couples them (video)
    photo_fraction: most pixels per image, as a fraction of the crop, that the photometric
        loss reads; a larger region is thinned evenly to this many pixels at each z-buffer
        refresh (the loss is a mean over them). An aligned face's region is 25-35% of the
        crop, and padding costs as much as a pixel.
    """

    landmark_steps: int = 100
    photo_steps: int = 100
    raster_every: int = 10
    landmark_groups: tuple[str, ...] = ("angle", "trans", "id", "exp")
    freeze: tuple[str, ...] = ()
    landmark_rates: LearningRates = LearningRates()
    photo_rates: LearningRates = LearningRates(id=0.05, exp=0.05, tex=0.1, angle=0.003, gamma=0.005, trans=0.002)
    weights: LossWeights = LossWeights()
    light_init: bool = True
    light_ridge: float = 1e-3
    photo_fraction: float = 0.25
    temporal: TemporalWeights | None = None

    def __post_init__(self):
        if not 0.0 < self.photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in (0, 1], got {self.photo_fraction}")
        for name in (*self.landmark_groups, *self.freeze):
            if name not in GROUPS:
                raise ValueError(f"unknown coefficient group {name!r}; groups are {GROUPS}")
        if self.landmark_steps < 0 or self.photo_steps < 0:
            raise ValueError("landmark_steps and photo_steps must be >= 0")
        if self.raster_every < 1 or self.photo_steps % self.raster_every:
            raise ValueError(
                f"photo_steps ({self.photo_steps}) must be a multiple of raster_every ({self.raster_every})"
            )


class FitResult(NamedTuple):
    """Result for B images.

    coeffs: Coeffs[B]     best iterate of the last stage (fit_set: id and tex equal across B)
    loss: f32[B]          per-image objective at that iterate
    history: f32[S, B]    per-image objective at every step (S = landmark_steps + photo_steps)
    status: i32[B]        bit flags BAD_INPUT | NONFINITE | DIVERGED; 0 = ok
    """

    coeffs: Coeffs
    loss: jnp.ndarray
    history: jnp.ndarray
    status: jnp.ndarray


def fit(model: FaceModel, images, landmarks, init: Coeffs | None = None, config: FitConfig = FitConfig(),
        camera: Camera = Camera(), identity: Identity | None = None) -> FitResult:
    """Fit coefficients to each image independently.

    model: FaceModel                 the morphable model
    images: u8|f32[B, S, S, 3]       aligned RGB crops, top-down (float: 0-1), S = camera.image_size
    landmarks: f32[B, 68 | 5, 2]     crop pixels, x = column, y = row (top-down)
    init: Coeffs[B] | None           starting point; None = mean face with a closed-form pose
    identity: Identity | None        the photometric stage's perceptual term at `identity.weight`
    Returns `FitResult`.
    """
    return _run(model, images, landmarks, init, config, camera, shared=False, identity=identity)


def fit_set(model: FaceModel, images, landmarks, init: Coeffs | None = None, config: FitConfig = FitConfig(),
            camera: Camera = Camera(), identity: Identity | None = None) -> FitResult:
    """Fit B photos of ONE person: one id and one tex for all, per-photo exp, angle, gamma, trans.

    Same inputs as `fit`; an `init` with different id/tex per image starts from their mean.
    The identity and albedo priors count once for the set (more photos = more evidence).
    Photos with bad input (BAD_INPUT) do not contribute.
    """
    return _run(model, images, landmarks, init, config, camera, shared=True, identity=identity)


def average_identity(coeffs: Coeffs, status=None) -> Coeffs:
    """Baseline for image sets: per-image fits with id and tex replaced by their mean over B.

    coeffs: Coeffs[B]; status: i32[B] | None (images with BAD_INPUT are left out of the mean).
    """
    keep = jnp.ones(coeffs.batch_shape, jnp.float32)
    if status is not None:
        keep = (jnp.bitwise_and(jnp.asarray(status), BAD_INPUT) == 0).astype(jnp.float32)
    w = keep / jnp.maximum(jnp.sum(keep), 1.0)

    def mean(x):
        return jnp.broadcast_to(jnp.tensordot(w, x, axes=1), x.shape)

    return coeffs._replace(id=mean(coeffs.id), tex=mean(coeffs.tex))


def face_loss(model: FaceModel, coeffs: Coeffs, image, landmarks, weights: LossWeights = LossWeights(),
              camera: Camera = Camera()):
    """Total refinement objective of ONE face, rendered now, and its terms (a dict of f32[]).

    image: f32[S, S, 3] 0-1 top-down; landmarks: f32[68 | 5, 2] top-down crop pixels.
    The photometric stage's objective of `fit`, over every region pixel.
    """
    target = flip_y(jnp.asarray(landmarks, jnp.float32), camera.image_size)
    fragments = render(model, coeffs, camera).fragments
    terms = face_terms(model, coeffs, jnp.asarray(image, jnp.float32), target, fragments, camera)
    terms["reg"] = coeff_prior(coeffs, weights)
    return objective(terms, weights), terms


def _run(model, images, landmarks, init, config: FitConfig, camera: Camera, shared: bool,
         identity: Identity | None = None) -> FitResult:
    images, landmarks = check_inputs(model, images, landmarks, init, camera)
    batch = images.shape[0]
    if init is None:
        init_c, have_init = Coeffs.zeros((batch,)), False
    else:
        init_c, have_init = Coeffs(*(jnp.asarray(x, jnp.float32) for x in init)), True
    free = tuple(g for g in GROUPS if g not in config.freeze)
    landmark_groups = set(config.landmark_groups)
    if landmarks.shape[1] == 5:  # five points cannot constrain 144 shape coefficients: pose only
        landmark_groups &= {"angle", "trans"}
    static = Static(
        config.landmark_steps, config.photo_steps, config.raster_every,
        tuple(g for g in free if g in landmark_groups), free, config.light_init, camera, shared,
        config.temporal is not None, max(1, round(config.photo_fraction * camera.image_size**2)),
    )
    weights, variables = config.weights, None
    if identity is not None:  # a static network and its weights as data: off, the program is unchanged
        static = static._replace(identity=identity.net)
        weights, variables = dataclasses.replace(weights, identity=identity.weight), identity.variables
    hyper = Hyper(config.landmark_rates, config.photo_rates, weights, jnp.float32(config.light_ridge),
                  config.temporal or TemporalWeights())
    return FitResult(*fit_jit(model, photo_region(model), images, landmarks, init_c, have_init, hyper, static,
                              variables))


def check_inputs(model: FaceModel, images, landmarks, init, camera: Camera):
    """(images f32[B, S, S, 3] 0-1, landmarks f32[B, K, 2]) or a ValueError naming the fix."""
    if not isinstance(model.point_buf, jax.core.Tracer) and not point_buf_is_complete(model.tris, model.point_buf):
        raise ValueError(
            f"model {model.label!r}: point_buf must list every triangle of each vertex exactly once (padded "
            "with T, at most point_buf.shape[1] per vertex); the fitting gradients rely on it, as the BFM files do."
        )
    size = camera.image_size
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"images must be [B, {size}, {size}, 3] aligned RGB crops (see jaxface.align), got {images.shape}; "
            "for one image add a batch axis"
        )
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
        finite_max = float(jnp.max(jnp.where(jnp.isfinite(images), images, 0.0)))
        if finite_max > 1.5:
            raise ValueError(f"float images must be 0-1, found values up to {finite_max:.1f}; divide by 255")
    else:
        raise ValueError(f"images must be uint8 (0-255) or float (0-1), got {images.dtype}")
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.ndim != 3 or landmarks.shape[0] != images.shape[0] or landmarks.shape[1:] not in ((68, 2), (5, 2)):
        raise ValueError(
            f"landmarks must be f32[B, 68, 2] or f32[B, 5, 2] (crop pixels, top-down) with B = {images.shape[0]}, "
            f"got {landmarks.shape}"
        )
    if model.keypoints.shape != (68,):
        raise ValueError(f"model.keypoints must be i32[68], got {model.keypoints.shape}")
    if init is not None:
        if not isinstance(init, Coeffs) or init.batch_shape != (images.shape[0],):
            raise ValueError(f"init must be Coeffs with batch shape ({images.shape[0]},) or None")
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in init):
            raise ValueError("init has non-finite coefficients; pass finite values or init=None")
    return images, landmarks
