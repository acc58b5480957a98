"""Per-image gradient refinement of coefficients (analysis by synthesis), and image-set fitting.

`fit` optimizes each image's 257 coefficients independently (one batched program: the
batch is vmapped, the steps are a `lax.scan`, one compile per input shape). `fit_set`
fits ONE identity and albedo (id, tex) shared by B photos of one person, with per-photo
expression, pose, light and translation.

Stages (SPEC "Training losses" weights, `LossWeights`):
0. Initialization (when no `init` is given): the mean face, frontal light, and a closed-form
   pose: a scaled-orthographic fit of the model's 3D keypoints to the landmarks gives the
   rotation, and its scale gives the distance (t_z = distance - focal / scale).
1. Landmark stage (`landmark_steps`): `landmark_groups` (default pose + id + exp) from
   landmark loss + priors, on the 68 keypoint vertices only (cheap). With 5-point
   landmarks only the pose (angle, trans) of `landmark_groups` is optimized here.
2. Light: gamma by linear least squares at the first refresh's pixel samples (colour is
   linear in gamma).
3. Photometric stage (`photo_steps`): every non-frozen group from photometric + landmark
   + priors. The photometric loss is over the rendered front-face region (the model's
   `front_mask_idx` triangles), so the background does not matter. Rasterization (the
   renderer's non-differentiable z-buffer) is refreshed every `raster_every` steps; in
   between, colours and barycentrics are re-interpolated from the current vertices for
   the fixed triangle ids, which is exactly the renderer's gradient path. Each refresh
   lists the region's pixels (at most `photo_fraction` of the crop), and the steps run
   on the whole batch at once, batch minor, on the region's vertices and their one-ring
   (`jaxface.batched`: the same formulas, with faster gathers on CPU).

Adam per coefficient group with its own learning rate and a cosine decay to 10 % per stage.
Frozen groups (`freeze`) get exactly zero updates. Per image: inputs with non-finite
values are flagged `BAD_INPUT` and left at their initialization without touching the rest
of the batch; steps with a non-finite loss or gradient are skipped (`NONFINITE`); the
best iterate of the last stage is returned.

Landmarks: f32[B, 68, 2] (the 68-point layout) or f32[B, 5, 2] (left eye, right eye, nose,
left mouth, right mouth, as in `jaxface.align`), top-down crop pixels. Five points are
compared against the same combinations of model keypoints that alignment uses: eyes =
mean(37, 40) / mean(43, 46), nose 31, mouth corners 49 / 55 (one-based), weights 1 except
20 on the nose (its weight in the 68-point scheme).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxface import batched, losses
from jaxface.camera import Camera
from jaxface.coeffs import LAYOUT, Coeffs
from jaxface.formation import (
    face_shape,
    form_face,
    project,
    rigid_transform,
    rotation_matrix,
    screen_coords,
    sh_terms,
    AMBIENT_OFFSET,
)
from jaxface.losses import LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.render import interpolate, rasterize
from jaxface.render.rasterize import triangle_ids

GROUPS = tuple(name for name, _ in LAYOUT)

# Status bit flags (FitResult.status); 0 means the image was fitted normally.
BAD_INPUT = 1  # non-finite landmarks or image: not fitted, returned at its initialization
NONFINITE = 2  # some step had a non-finite loss or gradient: skipped
DIVERGED = 4  # the last iterate's loss exceeds twice the best one (the best is returned)

# 5-point layout as combinations of the 68 model landmarks (one-based ids, see module doc).
_FIVE = np.zeros((5, 68), np.float32)
for _row, _ids in enumerate(((37, 40), (43, 46), (31,), (49,), (55,))):
    _FIVE[_row, np.asarray(_ids) - 1] = 1.0 / len(_ids)
FIVE_POINT_WEIGHTS = np.array([1.0, 1.0, 20.0, 1.0, 1.0], np.float32)


@dataclasses.dataclass(frozen=True)
class LearningRates:
    """Adam step sizes per coefficient group (coefficient units per step, before decay)."""

    id: float = 0.1
    exp: float = 0.1
    tex: float = 0.1
    angle: float = 0.01
    gamma: float = 0.01
    trans: float = 0.005


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Refinement settings. Step counts, `raster_every` and `camera` fix the compiled program;
    rates, weights and frozen groups are data (changing them does not recompile).

    landmark_steps: stage 1 steps (landmark loss on keypoints only)
    photo_steps: stage 3 steps (render + photometric); 0 gives a landmark-only fit
    raster_every: photometric steps between z-buffer refreshes; must divide photo_steps
    landmark_groups: groups optimized in stage 1 (pose + shape by default)
    freeze: groups never changed, e.g. ("id", "tex") to refine expression with a known identity
    light_init: solve gamma in closed form before stage 3 (skipped when gamma is frozen)
    photo_fraction: most pixels per image, as a fraction of the crop, that the photometric
        loss reads; a larger region is thinned evenly to this many pixels at each z-buffer
        refresh (the loss is a mean over them). An aligned face's region is 25-35% of the
        crop: 0.25 keeps 70-100% of its pixels and pads little (padding costs as much as a
        pixel). 0.25 against 0.4: mean error 0.913 vs 0.917 mm (`benchmarks/accuracy.py`)
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


class _Static(NamedTuple):
    landmark_steps: int
    photo_steps: int
    raster_every: int
    light_init: bool
    camera: Camera
    shared: bool  # fit_set: id and tex are one vector for the batch
    photo_samples: int  # pixels per image read by the photometric loss


# LossWeights as a pytree of traced scalars (same field names).
_Weights = NamedTuple("_Weights", [(f.name, jnp.ndarray) for f in dataclasses.fields(LossWeights)])


class _Hyper(NamedTuple):
    """Traced hyper-parameters (arrays, so they do not trigger recompiles)."""

    landmark_rates: Coeffs  # one scalar per group
    photo_rates: Coeffs
    landmark_free: Coeffs  # 1.0 = optimized in that stage, 0.0 = fixed
    photo_free: Coeffs
    weights: _Weights
    light_ridge: jnp.ndarray




# ----------------------------------------------------------------------------- public API

def fit(
    model: FaceModel,
    images,
    landmarks,
    init: Coeffs | None = None,
    config: FitConfig = FitConfig(),
    camera: Camera = Camera(),
) -> FitResult:
    """Fit coefficients to each image independently.

    model: FaceModel                 the morphable model
    images: u8|f32[B, S, S, 3]       aligned RGB crops, top-down (float: 0-1), S = camera.image_size
    landmarks: f32[B, 68 | 5, 2]     crop pixels, x = column, y = row (top-down)
    init: Coeffs[B] | None           starting point; None = mean face with a closed-form pose
    Returns `FitResult`.
    """
    return _run(model, images, landmarks, init, config, camera, shared=False)


def fit_set(
    model: FaceModel,
    images,
    landmarks,
    init: Coeffs | None = None,
    config: FitConfig = FitConfig(),
    camera: Camera = Camera(),
) -> FitResult:
    """Fit B photos of ONE person: one id and one tex for all, per-photo exp, angle, gamma, trans.

    Same inputs as `fit`; an `init` with different id/tex per image starts from their mean.
    The identity and albedo priors count once for the set (more photos = more evidence).
    Photos with bad input (BAD_INPUT) do not contribute.
    """
    return _run(model, images, landmarks, init, config, camera, shared=True)


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


def face_loss(model: FaceModel, coeffs: Coeffs, image, landmarks, weights: LossWeights = LossWeights(), camera: Camera = Camera()):
    """Total refinement objective of ONE face, rendered now, and its terms (a dict of f32[]).

    image: f32[S, S, 3] 0-1 top-down; landmarks: f32[68 | 5, 2] top-down crop pixels.
    The same objective as the photometric stage of `fit` (without the z-buffer caching).
    """
    target = _flip_landmarks(jnp.asarray(landmarks, jnp.float32), camera)
    fragments = _rasterize_face(model, coeffs, camera)
    terms = _face_terms(model, coeffs, jnp.asarray(image, jnp.float32), target, fragments, camera, photo=True)
    own = _own_priors(coeffs, terms["albedo"], weights, shared=False)
    return _data(terms, weights) + own, terms


# ----------------------------------------------------------------------------- input checks

def _run(model, images, landmarks, init, config: FitConfig, camera: Camera, shared: bool) -> FitResult:
    images, landmarks = _check_inputs(model, images, landmarks, init, camera)
    batch = images.shape[0]
    if init is None:
        init_c, have_init = Coeffs.zeros((batch,)), False
    else:
        init_c, have_init = Coeffs(*(jnp.asarray(x, jnp.float32) for x in init)), True
    samples = max(1, round(config.photo_fraction * camera.image_size**2))
    static = _Static(config.landmark_steps, config.photo_steps, config.raster_every, config.light_init, camera, shared, samples)
    hyper = _hyper(config, five_points=landmarks.shape[1] == 5)
    region = batched.photo_region(model)
    return _fit_jit(model, region, images, landmarks, init_c, have_init, hyper, static)


def _hyper(config: FitConfig, five_points: bool) -> _Hyper:
    def rates(r: LearningRates):
        return Coeffs(*(jnp.float32(getattr(r, g)) for g in GROUPS))

    def free(groups):
        return Coeffs(*(jnp.float32(g in groups and g not in config.freeze) for g in GROUPS))

    weights = _Weights(*(jnp.float32(getattr(config.weights, f.name)) for f in dataclasses.fields(LossWeights)))
    return _Hyper(
        rates(config.landmark_rates),
        rates(config.photo_rates),
        # Five points cannot constrain 144 shape coefficients: pose only in stage 1.
        free(set(config.landmark_groups) & {"angle", "trans"} if five_points else config.landmark_groups),
        free(GROUPS),
        weights,
        jnp.float32(config.light_ridge),
    )


def _check_inputs(model: FaceModel, images, landmarks, init, camera: Camera):
    if not isinstance(model.point_buf, jax.core.Tracer) and not batched.point_buf_is_complete(model.tris, model.point_buf):
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


# ----------------------------------------------------------------------------- per-face pieces

def _flip_landmarks(lm, camera: Camera):
    """Top-down crop pixels -> v-up camera coordinates (and back: the map is its own inverse)."""
    return jnp.stack([lm[..., 0], camera.image_size - 1 - lm[..., 1]], axis=-1)


def _select_points(lm68, num: int):
    """Model landmarks f32[68, 2] -> the layout of the targets (68 or 5 points)."""
    return lm68 if num == 68 else jnp.asarray(_FIVE) @ lm68


def _landmark_weights(num: int):
    return losses.LANDMARK_WEIGHTS if num == 68 else FIVE_POINT_WEIGHTS


def _keypoint_landmarks(model: FaceModel, coeffs: Coeffs, camera: Camera):
    """Projected 68 landmarks f32[68, 2] (v up) computed on the keypoint vertices only."""
    kp = model.keypoints
    sub = model.replace(mean_shape=model.mean_shape[kp], id_base=model.id_base[kp], exp_base=model.exp_base[kp])
    shape = face_shape(sub, coeffs.id, coeffs.exp)
    uv, _ = project(rigid_transform(shape, rotation_matrix(coeffs.angle), coeffs.trans), camera)
    return uv


def _samples(model: FaceModel, bases: batched.Bases, tri_ids, images, size: int) -> batched.Samples:
    """The photometric region's pixels of each image (at most `size`) as `batched.Samples`, with
    corners in the local vertex ids of `bases` (`batched.prepare`)."""

    def one(tri_id, image):
        keep = losses.region_mask(model, tri_id) > 0
        return batched.pixel_samples(tri_id, model.tris, keep, image, size)

    corners, *rest = jax.vmap(one)(tri_ids, images)
    return batched.batch_samples(bases.local[corners], *rest, bases.mean_shape.shape[1])


def _batch_terms(model, bases: batched.Bases, coeffs: Coeffs, targets, samples: batched.Samples, camera: Camera):
    """`_face_terms` of the photometric stage for a whole batch (each term f32[B]), computed
    batch minor (`jaxface.batched`) on the samples of the last z-buffer refresh."""
    faces = batched.form_faces_vm(bases, coeffs, jax.vmap(rotation_matrix)(coeffs.angle), camera)
    num = targets.shape[1]
    lm68 = jnp.stack([c[bases.keypoints].T for c in faces.uv], axis=-1)  # [B, 68, 2]
    landmark = jax.vmap(lambda p, t: losses.landmark_loss(_select_points(p, num), t, _landmark_weights(num)))
    return {
        "photo": batched.photometric_vm(faces.colors, faces.screen, samples),
        "landmark": landmark(lm68, targets),
        "albedo": batched.albedo_regularizer_vm(bases.albedo_prior, coeffs.tex),
        "gamma": jax.vmap(losses.lighting_regularizer)(coeffs.gamma),
    }


def _face_terms(model, coeffs, image, target, fragments, camera, photo: bool):
    """Unweighted loss terms of one face. target: f32[K, 2] v-up. fragments: z-buffer or None."""
    num = target.shape[0]
    if photo:
        face = form_face(model, coeffs, camera)
        verts = screen_coords(face.uv, face.depth, camera)
        rendered = jnp.clip(interpolate(face.colors, fragments, model.tris, verts), 0.0, 1.0)
        mask = lax.stop_gradient(losses.region_mask(model, fragments.tri_id))
        photo_term = losses.photometric_loss(rendered, image, mask)
        lm68, albedo_term = face.landmarks, losses.albedo_regularizer(face.albedo, model.skin_mask)
    else:
        lm68 = _keypoint_landmarks(model, coeffs, camera)
        photo_term = albedo_term = jnp.float32(0.0)
    lm_term = losses.landmark_loss(_select_points(lm68, num), target, _landmark_weights(num))
    return {"photo": photo_term, "landmark": lm_term, "albedo": albedo_term, "gamma": losses.lighting_regularizer(coeffs.gamma)}


def _data(terms, w: LossWeights):
    """Per-image part that never involves the shared identity."""
    return w.photo * terms["photo"] + w.landmark * terms["landmark"] + w.gamma * terms["gamma"]


def _own_priors(coeffs: Coeffs, albedo_term, w: LossWeights, shared: bool):
    """Per-image priors: expression always; identity, albedo coefficients and albedo
    variance only when they belong to the image (not shared across a set)."""
    exp = w.reg * w.exp_reg * jnp.sum(coeffs.exp**2, axis=-1)
    if shared:
        return exp
    return exp + w.reg * (w.id_reg * jnp.sum(coeffs.id**2, -1) + w.tex_reg * jnp.sum(coeffs.tex**2, -1)) + w.albedo * albedo_term


def _shared_priors(model: FaceModel, ident, tex, w: LossWeights, photo: bool):
    """Identity and albedo priors of a set, counted once."""
    out = w.reg * (w.id_reg * jnp.sum(ident**2) + w.tex_reg * jnp.sum(tex**2))
    if photo:
        albedo = (model.mean_tex + model.tex_base @ tex) / 255.0
        out = out + w.albedo * losses.albedo_regularizer(albedo, model.skin_mask)
    return out


# ----------------------------------------------------------------------------- initialization

def _closed_form_pose(model: FaceModel, target, camera: Camera):
    """(angle f32[3], trans f32[3]) of the mean face from landmarks f32[K, 2] (v up) by a
    scaled-orthographic fit: affine 2x3 map of the centred 3D keypoints, orthonormalized."""
    pts3 = model.mean_shape[model.keypoints]
    if target.shape[0] == 5:
        pts3 = jnp.asarray(_FIVE) @ pts3
    mu3, mu2 = jnp.mean(pts3, 0), jnp.mean(target, 0)
    x3, x2 = pts3 - mu3, target - mu2
    affine = jnp.linalg.solve(x3.T @ x3, x3.T @ x2).T  # [2, 3]
    u, s, vt = jnp.linalg.svd(affine, full_matrices=False)
    r12 = u @ vt
    rot = jnp.concatenate([r12, jnp.cross(r12[0], r12[1])[None]], axis=0)
    scale = jnp.mean(s)
    # R = Rz Ry Rx: R[2,0] = -sin y, R[2,1] = cos y sin x, R[2,2] = cos y cos x, R[1,0] = sin z cos y.
    angle = jnp.stack(
        [
            jnp.arctan2(rot[2, 1], rot[2, 2]),
            jnp.arcsin(jnp.clip(-rot[2, 0], -1.0, 1.0)),
            jnp.arctan2(rot[1, 0], rot[0, 0]),
        ]
    )
    tz = camera.distance - camera.focal / scale
    txy = (mu2 - camera.center) / scale - (rot @ mu3)[:2]
    return angle, jnp.concatenate([txy, tz[None]])


def _solve_light(bases: batched.Bases, coeffs: Coeffs, samples: batched.Samples, camera: Camera, ridge):
    """gamma f32[B, 27] minimizing the squared colour error at the region's pixel samples,
    which is linear in gamma: colour_c = sum_k b_k albedo_kc (Y_k . (gamma_c + 0.8 e_0))
    over the pixel's corners (ridge-regularized per channel)."""
    faces = batched.form_faces_vm(bases, coeffs, jax.vmap(rotation_matrix)(coeffs.angle), camera)
    feats = tuple(a * y for a in faces.albedo for y in sh_terms(*faces.normals))  # 27 x [P, B], c-major
    pix = jnp.stack(batched.interpolate_samples(feats, faces.screen, samples))
    pix = pix.reshape(3, 9, *pix.shape[1:])  # [3, 9, B, K]
    rhs = samples.target - AMBIENT_OFFSET * pix[:, 0]  # [3, B, K]
    a = pix * (samples.weight > 0)
    gram = jnp.einsum("ckbs,clbs->bckl", a, pix)  # [B, 3, 9, 9]
    reg = ridge * (jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None] / 9.0 + 1e-6) * jnp.eye(9)
    gamma = jnp.linalg.solve(gram + reg, jnp.einsum("ckbs,cbs->bck", a, rhs)[..., None])[..., 0]
    return gamma.reshape(-1, 27)


# ----------------------------------------------------------------------------- optimization

def _expand(params: Coeffs, batch: int) -> Coeffs:
    """Shared fields (no batch axis) broadcast to [B, w]."""
    return Coeffs(*(x if x.ndim == 2 else jnp.broadcast_to(x, (batch, x.shape[0])) for x in params))


def _per_image_losses(model, params, targets, valid, photo, hyper: _Hyper, static: _Static):
    """(objective f32[], per-image losses f32[B]) with bad images contributing zero.

    photo: None (landmark stage) or (`batched.prepare(model, region)`, `batched.Samples` of the last
    z-buffer refresh) for the photometric stage.
    """
    batch = targets.shape[0]
    coeffs = _expand(params, batch)
    w = hyper.weights
    if photo is not None:
        terms = _batch_terms(model, photo[0], coeffs, targets, photo[1], static.camera)
    else:
        terms = jax.vmap(lambda c, t: _face_terms(model, c, None, t, None, static.camera, False))(coeffs, targets)
    per_image = _data(terms, w) + _own_priors(coeffs, terms["albedo"], w, static.shared)
    per_image = jnp.where(valid, per_image, 0.0)
    total = jnp.sum(per_image)
    if static.shared:
        total = total + _shared_priors(model, params.id, params.tex, w, photo is not None)
    return total, per_image


def _make_step(model, targets, valid, photo, rates, free, hyper, static, step0, total_steps):
    """One Adam step of a stage as a `lax.scan` body over the step index within the chunk.

    photo: None or (bases, samples), as in `_per_image_losses`."""
    schedule = optax.cosine_decay_schedule(1.0, max(total_steps, 1), alpha=0.1)
    loss_fn = jax.value_and_grad(lambda p: _per_image_losses(model, p, targets, valid, photo, hyper, static), has_aux=True)

    def step(carry, t):
        params, opt_state, best, best_unit, best_img, status = carry
        (total, per_image), grads = loss_fn(params)
        if static.shared:
            # One objective: a non-finite value anywhere stops the whole set for that step.
            ok_all = jnp.isfinite(total) & _all_finite(grads)
            ok = jnp.broadcast_to(ok_all, valid.shape)
            unit = jnp.broadcast_to(total, valid.shape)
        else:
            grad_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g), axis=-1) for g in grads]), axis=0)
            ok = jnp.isfinite(per_image) & grad_ok
            unit = per_image

        def mask(per_image_mask, leaf):
            # Shared leaves (no batch axis) follow the set-wide decision (identical across images).
            return per_image_mask[:, None] if leaf.ndim == 2 else per_image_mask[0]

        improved = ok & (unit < best_unit)
        best = jax.tree.map(lambda b, p: jnp.where(mask(improved, p), p, b), best, params)
        best_unit = jnp.where(improved, unit, best_unit)
        best_img = jnp.where(improved, per_image, best_img)
        status = status | jnp.where(valid & ~ok, NONFINITE, 0)

        grads = jax.tree.map(lambda g, p: jnp.where(mask(ok, p), g, 0.0), grads, params)
        updates, opt_state = _ADAM.update(grads, opt_state)
        lr = schedule(step0 + t)
        move = ok & (valid | static.shared)  # bad images' own fields stay at their init
        params = jax.tree.map(
            lambda p, u, r, f: jnp.where(mask(move, p) & (f > 0), p - lr * r * u, p),
            params,
            updates,
            rates,
            free,
        )
        return (params, opt_state, best, best_unit, best_img, status), jnp.where(valid, per_image, jnp.nan)

    return step


_ADAM = optax.scale_by_adam()


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _run_stage(model, bases, params, images, targets, valid, status, hyper, static):
    """One stage from `params`: returns (best params, per-image loss at best, history f32[steps, B], status).

    bases: None for the landmark stage, `batched.prepare(model, region)` for the photometric one."""
    photo = bases is not None
    steps = static.photo_steps if photo else static.landmark_steps
    rates = hyper.photo_rates if photo else hyper.landmark_rates
    free = hyper.photo_free if photo else hyper.landmark_free
    batch = images.shape[0]
    inf = jnp.full((batch,), jnp.inf)
    carry = (params, _ADAM.init(params), params, inf, inf, status)
    if not photo:
        step = _make_step(model, targets, valid, None, rates, free, hyper, static, 0, steps)
        carry, history = lax.scan(step, carry, jnp.arange(steps))
    else:
        chunk = static.raster_every

        def outer(carry, k):
            coeffs = _expand(carry[0], batch)
            tri_ids = jax.vmap(lambda c: _triangle_ids(model, c, static.camera))(coeffs)
            samples = _samples(model, bases, tri_ids, images, static.photo_samples)
            step = _make_step(model, targets, valid, (bases, samples), rates, free, hyper, static, k * chunk, steps)
            return lax.scan(step, carry, jnp.arange(chunk))

        carry, history = lax.scan(outer, carry, jnp.arange(steps // chunk))
        history = history.reshape(steps, batch)
    _, _, best, _, best_img, status = carry
    return best, best_img, history, status


def _triangle_ids(model: FaceModel, coeffs: Coeffs, camera: Camera):
    """The z-buffer alone (i32[S, S] triangle ids) of one face: posed positions only, no
    normals, shading or barycentrics (what each refresh of the photometric stage needs)."""
    shape = face_shape(model, coeffs.id, coeffs.exp)
    uv, depth = project(rigid_transform(shape, rotation_matrix(coeffs.angle), coeffs.trans), camera)
    size = camera.image_size
    return triangle_ids(screen_coords(uv, depth, camera), model.tris, size, size)


def _rasterize_face(model: FaceModel, coeffs: Coeffs, camera: Camera):
    """Z-buffer `Fragments` of one face at its current coefficients."""
    face = form_face(model, coeffs, camera)
    size = camera.image_size
    return rasterize(screen_coords(face.uv, face.depth, camera), model.tris, size, size)


def _fit_impl(model, region: batched.Region, images, landmarks, init: Coeffs, have_init, hyper: _Hyper, static: _Static):
    batch, num = landmarks.shape[:2]
    camera = static.camera
    valid = jnp.all(jnp.isfinite(landmarks), axis=(1, 2)) & jnp.all(jnp.isfinite(images), axis=(1, 2, 3))
    # Bad images get finite stand-ins so nothing non-finite enters the (vmapped) computation.
    landmarks = jnp.where(valid[:, None, None], landmarks, 0.0)
    images = jnp.where(valid[:, None, None, None], images, 0.0)
    targets = _flip_landmarks(landmarks, camera)
    status = jnp.where(valid, 0, BAD_INPUT).astype(jnp.int32)

    angle, trans = jax.vmap(lambda t: _closed_form_pose(model, t, camera))(targets)
    pose_ok = valid & jnp.all(jnp.isfinite(angle), 1) & jnp.all(jnp.isfinite(trans), 1)
    fresh = init._replace(
        angle=jnp.where(pose_ok[:, None], angle, init.angle), trans=jnp.where(pose_ok[:, None], trans, init.trans)
    )
    coeffs = jax.tree.map(lambda a, b: jnp.where(have_init, a, b), init, fresh)
    if static.shared:
        keep = valid.astype(jnp.float32) / jnp.maximum(jnp.sum(valid), 1)
        params = coeffs._replace(id=keep @ coeffs.id, tex=keep @ coeffs.tex)
    else:
        params = coeffs

    histories = []
    best_img = jnp.zeros(batch)
    if static.landmark_steps:
        params, best_img, hist, status = _run_stage(model, None, params, images, targets, valid, status, hyper, static)
        histories.append(hist)
    if static.photo_steps:
        bases = batched.prepare(model, region)  # once per fit, outside the step loop
        if static.light_init:
            coeffs = _expand(params, batch)
            tri_ids = jax.vmap(lambda c: _triangle_ids(model, c, camera))(coeffs)
            gamma = _solve_light(bases, coeffs, _samples(model, bases, tri_ids, images, static.photo_samples), camera, hyper.light_ridge)
            ok = valid & (hyper.photo_free.gamma > 0) & jnp.all(jnp.isfinite(gamma), axis=-1)
            params = params._replace(gamma=jnp.where(ok[:, None], gamma, coeffs.gamma))
        params, best_img, hist, status = _run_stage(model, bases, params, images, targets, valid, status, hyper, static)
        histories.append(hist)
    history = jnp.concatenate(histories, axis=0) if histories else jnp.zeros((0, batch))
    if histories:
        last = history[-1]
        status = status | jnp.where(valid & (last > 2.0 * best_img), DIVERGED, 0)
    return FitResult(_expand(params, batch), best_img, history, status.astype(jnp.int32))


_fit_jit = jax.jit(_fit_impl, static_argnames=("static",))
