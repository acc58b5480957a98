"""The fitting program: initialization, the landmark and photometric stages as `lax.scan`s
of optax steps, best-iterate tracking and per-image status (one jit per input shape).

A step goes down the floors once: `objective.objective` (formation -> rendering -> loss
terms -> `losses.objective`) and its gradient, then the optax update.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxface import losses
from jaxface.camera import Camera
from jaxface.coeffs import LAYOUT, Coeffs
from jaxface.conventions import flip_y
from jaxface.fit import init
from jaxface.fit.objective import PhotoData, expand, identity_data, objective, region_samples
from jaxface.render import z_buffers
from jaxface.model.face_model import FaceModel
from jaxface.model.region import Region, region_bases

GROUPS = tuple(name for name, _ in LAYOUT)

# Status bit flags (FitResult.status); 0 means the image was fitted normally.
BAD_INPUT = 1  # non-finite landmarks or image: not fitted, returned at its initialization
NONFINITE = 2  # some step had a non-finite loss or gradient: skipped
DIVERGED = 4  # the last iterate's loss exceeds twice the best one (the best is returned)


class Static(NamedTuple):
    """What fixes the compiled program (hashable)."""

    landmark_steps: int
    photo_steps: int
    raster_every: int
    landmark_groups: tuple  # groups optimized in the landmark stage
    photo_groups: tuple  # groups optimized in the photometric stage
    light_init: bool
    camera: Camera
    shared: bool  # fit_set: id and tex are one vector for the batch
    temporal: bool  # a smoothness prior couples the images (frames in time order)
    photo_samples: int  # pixels per image read by the photometric loss
    identity: object = None  # the identity term's network (jaxface.identity.IdentityNet); None: no such term


class Hyper(NamedTuple):
    """Hyper-parameters passed as data (changing them does not recompile).

    landmark_rates, photo_rates: `LearningRates` of each stage; weights: `LossWeights`;
    light_ridge: f32[] ridge of the light solve; temporal: `TemporalWeights`."""

    landmark_rates: object
    photo_rates: object
    weights: losses.LossWeights
    light_ridge: jax.Array
    temporal: object


def stage_optimizer(rates, groups: tuple, steps: int) -> optax.GradientTransformation:
    """Adam per coefficient group at its own rate (`rates.<group>`), a cosine decay to 10 %
    over the stage, and exactly zero updates for the groups not in `groups`."""
    schedule = optax.cosine_decay_schedule(1.0, max(steps, 1), alpha=0.1)
    transforms = {g: optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-getattr(rates, g)))
                  for g in groups}
    transforms["frozen"] = optax.set_to_zero()
    return optax.multi_transform(transforms, Coeffs(*(g if g in groups else "frozen" for g in GROUPS)))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _make_step(model, targets, valid, photo, optimizer, hyper: Hyper, static: Static):
    """One optimizer step as a `lax.scan` body: (params, opt_state, best, best_unit,
    best_img, status) -> same, emitting the per-image objective (NaN for bad images)."""
    loss_fn = jax.value_and_grad(
        lambda p: objective(model, p, targets, valid, photo, hyper.weights, static.camera,
                            hyper.temporal if static.temporal else None), has_aux=True)

    def mask(per_image, leaf):
        # Shared leaves (no batch axis) follow the set-wide decision (identical across images).
        return per_image[:, None] if leaf.ndim == 2 else per_image[0]

    def step(carry, _):
        params, opt_state, best, best_unit, best_img, status = carry
        (total, per_image), grads = loss_fn(params)
        if static.shared or static.temporal:
            # One coupled objective: a non-finite value anywhere stops the whole set for that step.
            ok = jnp.broadcast_to(jnp.isfinite(total) & _all_finite(grads), valid.shape)
            unit = jnp.broadcast_to(total, valid.shape)
        else:
            grad_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g), axis=-1) for g in grads]), axis=0)
            ok = jnp.isfinite(per_image) & grad_ok
            unit = per_image
        improved = ok & (unit < best_unit)
        best = jax.tree.map(lambda b, p: jnp.where(mask(improved, p), p, b), best, params)
        best_unit = jnp.where(improved, unit, best_unit)
        best_img = jnp.where(improved, per_image, best_img)
        status = status | jnp.where(valid & ~ok, NONFINITE, 0)
        grads = jax.tree.map(lambda g, p: jnp.where(mask(ok, p), g, 0.0), grads, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        move = ok & (valid | static.shared)  # bad images' own fields stay at their init
        params = jax.tree.map(lambda p, u: jnp.where(mask(move, p), p + u, p), params, updates)
        return (params, opt_state, best, best_unit, best_img, status), jnp.where(valid, per_image, jnp.nan)

    return step


def _run_stage(model, region: Region | None, bases, params, images, targets, valid, status, hyper: Hyper,
               static: Static, identity=None):
    """One stage from `params`: (best params, per-image loss at best, history f32[steps, B], status).

    region, bases: None for the landmark stage; the photometric region and the model's
    `Bases` on it for the photometric one. identity: (variables, target embeddings f32[B, D],
    landmarks top-down) of the identity term, photometric stage only."""
    photo = region is not None
    steps = static.photo_steps if photo else static.landmark_steps
    rates = hyper.photo_rates if photo else hyper.landmark_rates
    optimizer = stage_optimizer(rates, static.photo_groups if photo else static.landmark_groups, steps)
    batch = images.shape[0]
    inf = jnp.full((batch,), jnp.inf)
    carry = (params, optimizer.init(params), params, inf, inf, status)
    if not photo:
        carry, history = lax.scan(_make_step(model, targets, valid, None, optimizer, hyper, static), carry, None, steps)
    else:
        prior = losses.albedo_prior(model, region.skin)

        def refresh(carry, _):
            tri_ids = z_buffers(model, expand(carry[0], batch), static.camera)
            samples = region_samples(model, region, tri_ids, images, static.photo_samples)
            ident = None
            if identity is not None:
                variables, target, lm = identity
                ident = identity_data(model, region, static.identity, variables, target, images, lm, tri_ids)
            step = _make_step(model, targets, valid, PhotoData(bases, prior, samples, ident), optimizer, hyper, static)
            return lax.scan(step, carry, None, static.raster_every)

        carry, history = lax.scan(refresh, carry, None, steps // static.raster_every)
        history = history.reshape(steps, batch)
    _, _, best, _, best_img, status = carry
    return best, best_img, history, status


def _initial_light(model, region: Region, bases, params, images, valid, hyper: Hyper, static: Static):
    """params with gamma solved in closed form at the region's pixel samples."""
    coeffs = expand(params, images.shape[0])
    samples = region_samples(model, region, z_buffers(model, coeffs, static.camera), images, static.photo_samples)
    gamma = init.solve_light(bases, coeffs, samples, static.camera, hyper.light_ridge)
    ok = valid & jnp.all(jnp.isfinite(gamma), axis=-1)
    return params._replace(gamma=jnp.where(ok[:, None], gamma, coeffs.gamma))


def fit_program(model: FaceModel, region: Region, images, landmarks, init_coeffs: Coeffs, have_init, hyper: Hyper,
                static: Static, identity_vars=None):
    """The whole fit of a batch (images f32[B, S, S, 3] 0-1, landmarks f32[B, K, 2] top-down):
    returns (coeffs Coeffs[B], loss f32[B], history f32[steps, B], status i32[B]).
    identity_vars: the weights of `static.identity` (None without an identity term)."""
    batch = landmarks.shape[0]
    camera = static.camera
    valid = jnp.all(jnp.isfinite(landmarks), axis=(1, 2)) & jnp.all(jnp.isfinite(images), axis=(1, 2, 3))
    # Bad images get finite stand-ins so nothing non-finite enters the (vmapped) computation.
    landmarks = jnp.where(valid[:, None, None], landmarks, 0.0)
    images = jnp.where(valid[:, None, None, None], images, 0.0)
    targets = flip_y(landmarks, camera.image_size)
    status = jnp.where(valid, 0, BAD_INPUT).astype(jnp.int32)

    angle, trans = jax.vmap(lambda t: init.closed_form_pose(model, t, camera))(targets)
    pose_ok = valid & jnp.all(jnp.isfinite(angle), 1) & jnp.all(jnp.isfinite(trans), 1)
    fresh = init_coeffs._replace(angle=jnp.where(pose_ok[:, None], angle, init_coeffs.angle),
                                 trans=jnp.where(pose_ok[:, None], trans, init_coeffs.trans))
    params = jax.tree.map(lambda a, b: jnp.where(have_init, a, b), init_coeffs, fresh)
    if static.shared:
        keep = valid.astype(jnp.float32) / jnp.maximum(jnp.sum(valid), 1)
        params = params._replace(id=keep @ params.id, tex=keep @ params.tex)

    histories = []
    best_img = jnp.zeros(batch)
    if static.landmark_steps:
        params, best_img, hist, status = _run_stage(model, None, None, params, images, targets, valid, status, hyper,
                                                    static)
        histories.append(hist)
    if static.photo_steps:
        bases = region_bases(model, region)  # once per fit, outside the step loops
        if static.light_init and "gamma" in static.photo_groups:
            params = _initial_light(model, region, bases, params, images, valid, hyper, static)
        identity = None
        if static.identity is not None:  # the photos' embeddings: the term's constant target
            identity = (identity_vars, static.identity(identity_vars, images, landmarks), landmarks)
        params, best_img, hist, status = _run_stage(model, region, bases, params, images, targets, valid, status,
                                                    hyper, static, identity)
        histories.append(hist)
    history = jnp.concatenate(histories, axis=0) if histories else jnp.zeros((0, batch))
    if histories:
        status = status | jnp.where(valid & (history[-1] > 2.0 * best_img), DIVERGED, 0)
    return expand(params, batch), best_img, history, status.astype(jnp.int32)


fit_jit = jax.jit(fit_program, static_argnames=("static",))
