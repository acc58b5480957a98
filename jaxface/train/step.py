"""The train step: R-Net -> coefficients -> formation + rendering -> loss terms -> Adam.

  images u8[B, 224, 224, 3] -> R-Net (train-mode BatchNorm) -> coefficients f32[B, 257]
  -> batched face formation + rendering -> loss terms -> `losses.objective` -> Adam update.

Weak (photo) loss: the terms photo, landmark, reg, albedo, gamma [, identity] weighted by
`LossWeights` (SPEC "Training losses"). Photometric mask: the reference multiplies the
rendered face mask by a skin-probability image from a separate skin detector; jaxface has
none, so the mask is the rendered face restricted to the model's front region and to
visible pixels (occluders inside that region still count).
Supervised (synthetic) loss: coeffs = mean_b,j w_j (pred_j - true_j)^2 over the 257 values,
w the inverse prior variance of the scene sampler (`coefficient_weights`), plus the landmark
term of the predicted keypoints at `landmark_weight_supervised`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxface import conventions, formation, losses
from jaxface.camera import Camera
from jaxface.coeffs import NUM_COEFFS, SLICES, Coeffs
from jaxface.data import Batch
from jaxface.identity.loss import perceptual_loss
from jaxface.losses import LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.render import render_faces
from jaxface.rnet import RNet, RNetConfig, to_network_input
from jaxface.synth_data import SceneConfig


@dataclasses.dataclass(frozen=True)
class IdentityLoss:
    """The perceptual identity term: weight * mean(1 - cos(features(rendered), features(photo))).

    features(variables, images, landmarks) -> f32[B, D]: a frozen face-recognition network
        with the alignment it expects (`jaxface.identity.IdentityNet`: dlib's or ArcFace's),
        on images f32[B, 224, 224, 3] (RGB 0-1, top-down; the rendered face composited over
        the photo) with the batch's landmarks f32[B, 68 | 5, 2] (top-down crop pixels). It
        must be jax-traceable and hashable (a static argument of the jitted step); its
        `variables` are passed to `train_step` as data. Gradients flow through it into the
        rendering only (the photo's features are a constant target).
    weight: 0.2 in the paper / PyTorch reference.
    """

    features: Callable
    weight: float = 0.2


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about the train step (hashable; one compile per spec and shape).

    supervised: coefficient loss on synthetic batches (else the weak photo loss)
    coeff_weights: f32[257] as a tuple, the per-value weights inside the coefficient loss
    landmark_weight_supervised: weight of the landmark term in the supervised loss
    """

    rnet: RNetConfig = RNetConfig()
    learning_rate: float = 1e-4
    supervised: bool = False
    weights: LossWeights = LossWeights()
    coeff_weights: tuple[float, ...] = (1.0,) * NUM_COEFFS
    landmark_weight_supervised: float = 0.0
    identity: IdentityLoss | None = None
    camera: Camera = Camera()

    def __post_init__(self):
        if len(self.coeff_weights) != NUM_COEFFS:
            raise ValueError(f"coeff_weights needs {NUM_COEFFS} values, got {len(self.coeff_weights)}")
        if self.weights.identity != 0 and self.identity is None:
            raise ValueError("LossWeights.identity is set but no face-recognition network is plugged in; "
                             "pass IdentityLoss(features, weight) instead (the weight lives there)")

    def loss_weights(self) -> LossWeights:
        """The weights `losses.objective` applies to this step's terms."""
        if self.supervised:
            return dataclasses.replace(self.weights, landmark=self.landmark_weight_supervised)
        return dataclasses.replace(self.weights, identity=self.identity.weight if self.identity is not None else 0.0)


def coefficient_weights(config: SceneConfig = SceneConfig()) -> np.ndarray:
    """f32[257]: inverse variance of each coefficient under `sample_coeffs(config)`."""
    var = np.zeros(NUM_COEFFS, np.float64)

    def put(name, values):
        a, b = SLICES[name]
        var[a:b] = values

    put("id", config.id_scale ** 2)
    put("exp", config.exp_scale ** 2)
    put("tex", config.tex_scale ** 2)
    put("angle", np.deg2rad([config.max_pitch_deg, config.max_yaw_deg, config.max_roll_deg]) ** 2 / 3)
    lo, hi = config.ambient
    sh = np.array([(hi - lo) ** 2 / 12] + [config.first_order ** 2] * 3 + [config.second_order ** 2] * 5)
    put("gamma", np.tile(sh + config.tint ** 2, 3))
    put("trans", np.array([config.max_shift, config.max_shift, config.max_depth]) ** 2 / 3)
    return (1.0 / np.maximum(var, 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------- state

class TrainState(NamedTuple):
    """step: i32[]; params / batch_stats: the R-Net variables; opt_state: Adam's moments."""

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def optimizer(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def init_state(variables: dict, spec: StepSpec) -> TrainState:
    """Step 0 from R-Net variables {"params", "batch_stats"}."""
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"],
                      optimizer(spec.learning_rate).init(params))


# ----------------------------------------------------------------------------- loss terms

def identity_loss(features: Callable, variables, rendered, photos, landmarks):
    """mean(1 - cos(features(rendered), features(photos))); photos' features are a constant target."""
    return jnp.mean(perceptual_loss(features, variables, rendered, photos, landmarks))


def coefficient_loss(pred, true, spec: StepSpec):
    """mean_b,j w_j (pred_j - true_j)^2 for pred, true f32[B, 257]."""
    return jnp.mean(jnp.asarray(spec.coeff_weights, jnp.float32) * (pred - true) ** 2)


class Rendered(NamedTuple):
    """Renders of a batch: composite / image f32[B, S, S, 3], coverage f32[B, S, S] (any face
    pixel), mask f32[B, S, S] (the photometric region), landmarks f32[B, 68, 2] top-down."""

    composite: jax.Array
    image: jax.Array
    coverage: jax.Array
    mask: jax.Array
    landmarks: jax.Array


def render_batch(model: FaceModel, coeffs: Coeffs, photos, camera: Camera) -> tuple[Rendered, jax.Array]:
    """Form and render B faces over their photos f32[B, S, S, 3]; also returns albedo f32[B, V, 3]."""
    faces, out = render_faces(model, coeffs, camera, photos)
    mask = lax.stop_gradient(jax.vmap(partial(losses.region_mask, model))(out.fragments.tri_id))
    lm = conventions.flip_y(faces.landmarks, camera.image_size)
    return Rendered(out.composite, out.image, out.mask, mask, lm), faces.albedo


def weak_terms(model: FaceModel, coeffs: Coeffs, photos, landmarks, spec: StepSpec, identity_vars=None):
    """Unweighted terms of the photo loss and the renders. photos f32[B, S, S, 3] 0-1;
    identity_vars: the variables of `spec.identity.features`."""
    r, albedo = render_batch(model, coeffs, photos, spec.camera)
    terms = {
        "photo": losses.photometric_loss(r.image, photos, r.mask),
        "landmark": losses.landmark_term(r.landmarks, landmarks),
        "reg": losses.coeff_regularizer(coeffs, spec.weights),
        "albedo": losses.albedo_regularizer(albedo, model.skin_mask),
        "gamma": losses.lighting_regularizer(coeffs.gamma),
    }
    if spec.identity is not None:
        terms["identity"] = identity_loss(spec.identity.features, identity_vars, r.composite, photos, landmarks)
    return terms, r


def supervised_terms(model: FaceModel, pred, true, landmarks, spec: StepSpec):
    """Unweighted terms of the synthetic loss. pred, true f32[B, 257]."""
    keypoints = partial(formation.keypoint_landmarks, camera=spec.camera)
    lm = jax.vmap(keypoints, in_axes=(None, 0))(model, Coeffs.from_vector(pred))
    lm = conventions.flip_y(lm, spec.camera.image_size)
    return {"coeffs": coefficient_loss(pred, true, spec), "landmark": losses.landmark_term(lm, landmarks)}


def _loss(params, batch_stats, batch: Batch, model: FaceModel, spec: StepSpec, identity_vars):
    x = to_network_input(batch.images, spec.rnet)
    pred, updates = RNet(spec.rnet).apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
    pred = pred.astype(jnp.float32)
    if spec.supervised:
        terms = supervised_terms(model, pred, batch.coeffs, batch.landmarks, spec)
    else:
        photos = batch.images.astype(jnp.float32) / 255.0
        terms, _ = weak_terms(model, Coeffs.from_vector(pred), photos, batch.landmarks, spec, identity_vars)
    loss = losses.objective(terms, spec.loss_weights())
    return loss, ({"loss": loss, **terms}, updates["batch_stats"])


@partial(jax.jit, static_argnames=("spec",))
def train_step(state: TrainState, batch: Batch, model: FaceModel, spec: StepSpec,
               identity_vars=None) -> tuple[TrainState, dict]:
    """One Adam step on `batch` (images u8[B, 224, 224, 3]); returns the new state and the loss
    terms (f32[] each). identity_vars: the frozen weights of `spec.identity.features` (never
    updated). Place `batch` sharded and the rest replicated for data parallelism."""
    if spec.supervised and batch.coeffs is None:
        raise ValueError("supervised training needs batches with true coefficients (synthetic scenes)")
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, model, spec, identity_vars)
    updates, opt_state = optimizer(spec.learning_rate).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics


@partial(jax.jit, static_argnames=("spec",))
def evaluate(variables: dict, batch: Batch, model: FaceModel, spec: StepSpec) -> tuple[dict, Rendered]:
    """Eval-mode (running BatchNorm) prediction, renders and the photo/landmark terms of a batch
    (+ the coefficient loss when the batch has true coefficients)."""
    pred = RNet(spec.rnet).apply(variables, to_network_input(batch.images, spec.rnet), train=False)
    pred = pred.astype(jnp.float32)
    photos = batch.images.astype(jnp.float32) / 255.0
    r, _ = render_batch(model, Coeffs.from_vector(pred), photos, spec.camera)
    terms = {"photo": losses.photometric_loss(r.image, photos, r.mask),
             "landmark": losses.landmark_term(r.landmarks, batch.landmarks)}
    if batch.coeffs is not None:
        terms["coeffs"] = coefficient_loss(pred, batch.coeffs, spec)
    return terms, r
