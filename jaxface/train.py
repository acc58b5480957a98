"""Training R-Net: weakly-supervised on photos (SPEC "Training losses") or supervised on
synthetic renders with known coefficients; orbax checkpoints, exact resume, data parallelism.

The step (`train_step`, jitted once per `StepSpec` and input shape):
  images u8[B, 224, 224, 3] -> R-Net (train-mode BatchNorm) -> coefficients f32[B, 257]
  -> vmapped face formation + rendering -> loss terms -> gradients -> Adam update.

Weak (photo) loss = 1.92 photometric + 1.6e-3 landmark + 3e-4 coefficient prior
  + 5 albedo variance + 10 light colour variance [+ identity, a pluggable term, off by default].
  Photometric mask: the reference multiplies the rendered face mask by a skin-probability
  image from a separate skin detector (its `mask/` folder). jaxface has no skin detector, so
  the mask is the rendered face mask restricted to the model's front region
  (`front_mask_idx` triangles) and to visible pixels: occluders such as hair, glasses or
  hands inside that region still count, which the reference's skin mask would exclude.
Supervised (synthetic) loss = mean_b,j w_j (pred_j - true_j)^2 over the 257 values with w
  the inverse prior variance of the scene sampler (every coefficient weighs ~1 at the prior
  mean), + 1.6e-3 landmark loss on the predicted keypoints.

Data parallelism: a 1-D `Mesh` over the devices with axis "data"; batches are sharded along
it, parameters, optimizer state and the face model replicated. The step is one global-view
program (GSPMD inserts the gradient and BatchNorm-statistics all-reduces), so 1 CPU, 1 GPU
or 8 GPUs run the same code and agree up to reduction order.

Run folder:
    train.json        what was trained: config, R-Net config, data source, face model
    metrics.csv       step, split, loss terms, images/s (appended on resume)
    checkpoints/N/    orbax: {state: params, batch_stats, opt_state, step; meta: data position, seed}
    val/              overlays of the validation images (step_NNNNNNN_I.png)
    rnet/             the trained network in the inference format (`save_rnet`)

Resume: batches are pure functions of (seed, step) (`jaxface.data`), so the iterator state
is the step; `--resume` restores the latest checkpoint and continues the identical stream.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxface import losses
from jaxface.camera import Camera
from jaxface.coeffs import NUM_COEFFS, SLICES, Coeffs
from jaxface.data import AugmentConfig, Batch, BatchSource, PhotoDataset, SyntheticSource, prefetch, to_device
from jaxface.formation import form_face, project, rigid_transform, rotation_matrix, screen_coords
from jaxface.losses import LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.render import render_mesh
from jaxface.rnet import RNet, RNetConfig, init_rnet, load_rnet, save_rnet, to_network_input
from jaxface.rnet.network import abstract_variables
from jaxface.synth_data import SceneConfig

DATA_AXIS = "data"
SYNTHETIC_WARNING = ("trained on SYNTHETIC renders: a pre-training / demonstration network, "
                     "not a model for reconstructing real faces")
METRIC_COLUMNS = ("step", "split", "loss", "photo", "landmark", "reg", "albedo", "gamma", "identity",
                  "coeffs", "images_per_s", "seconds")
# Five detections as combinations of the 68 model keypoints (one-based ids), the rule of
# alignment: eyes mean(37, 40) / mean(43, 46), nose 31, mouth corners 49 / 55.
_FIVE_IDS = ((37, 40), (43, 46), (31,), (49,), (55,))
FIVE_POINT_WEIGHTS = (1.0, 1.0, 20.0, 1.0, 1.0)  # the nose keeps its 68-point weight


# ----------------------------------------------------------------------------- configuration

@dataclasses.dataclass(frozen=True)
class IdentityLoss:
    """The perceptual identity term: weight * mean(1 - cos(features(rendered), features(photo))).

    features: images f32[B, H, W, 3] (RGB 0-1 crops, 224x224, top-down; the rendered face
        composited over the photo) -> f32[B, D]. A frozen face-recognition network with its
        weights closed over (the reference uses ArcFace on a 112x112 similarity-aligned crop:
        do that alignment inside the callable). It must be jax-traceable; gradients flow
        through it into the rendering only (the photo's features are a constant target).
    weight: 0.2 in the paper / PyTorch reference.
    The callable is a static argument of the jitted step: pass the same object each step.
    """

    features: Callable
    weight: float = 0.2


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about the train step (hashable; one compile per spec and shape).

    supervised: coefficient loss on synthetic batches (else the weak photo loss)
    coeff_weights: f32[257] as a tuple, weights of the supervised coefficient loss
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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. `every` values are in steps; val_every = 0 validates only at the end,
    val_images = 0 never. landmark_weight_supervised: the landmark term of synthetic
    pre-training, off by default: at 1.6e-3 (the photo loss's weight) a fresh network's loss
    jumped 4x at step 2 (lr 1e-4, batch 2) while the coefficient loss alone fell steadily."""

    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    seed: int = 0
    supervised: bool = False
    weights: LossWeights = LossWeights()
    landmark_weight_supervised: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 500
    max_to_keep: int = 3
    val_every: int = 0
    val_images: int = 4
    prefetch: int = 2

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "max_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_images < 0 or self.val_every < 0:
            raise ValueError("TrainConfig.val_images and val_every must be >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}")


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


def make_spec(config: TrainConfig, rnet: RNetConfig, scene: SceneConfig | None = None,
              identity: IdentityLoss | None = None, camera: Camera = Camera()) -> StepSpec:
    weights = tuple(float(w) for w in coefficient_weights(scene or SceneConfig()))
    return StepSpec(rnet, config.learning_rate, config.supervised, config.weights, weights,
                    config.landmark_weight_supervised, identity, camera)


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


# ----------------------------------------------------------------------------- losses

def five_point_landmarks(lm68):
    """f32[*B, 68, 2] -> f32[*B, 5, 2] with the alignment rule (see `_FIVE_IDS`)."""
    return jnp.stack([jnp.mean(lm68[..., [i - 1 for i in ids], :], axis=-2) for ids in _FIVE_IDS], axis=-2)


def landmark_term(pred68, target):
    """Landmark loss of predicted 68 points against 68 or 5 targets, f32[B, K, 2] top-down."""
    if target.shape[-2] == 68:
        return losses.landmark_loss(pred68, target)
    if target.shape[-2] == 5:
        return losses.landmark_loss(five_point_landmarks(pred68), target, jnp.asarray(FIVE_POINT_WEIGHTS))
    raise ValueError(f"target landmarks must be f32[B, 68 or 5, 2], got {target.shape}")


def keypoint_landmarks(model: FaceModel, coeffs: Coeffs, camera: Camera):
    """f32[68, 2] top-down projected keypoints of ONE face, forming only those 68 vertices."""
    kp = model.keypoints
    shape = model.mean_shape[kp] + model.id_base[kp] @ coeffs.id + model.exp_base[kp] @ coeffs.exp
    uv, _ = project(rigid_transform(shape, rotation_matrix(coeffs.angle), coeffs.trans), camera)
    return jnp.stack([uv[:, 0], camera.image_size - 1 - uv[:, 1]], axis=-1)


def identity_loss(features: Callable, rendered, photos):
    """mean(1 - cos(features(rendered), features(photos))); photos' features are a constant target."""
    a = features(rendered)
    b = lax.stop_gradient(features(photos))
    cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-8)
    return jnp.mean(1.0 - cos)


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
    size = camera.image_size
    faces = jax.vmap(form_face, in_axes=(None, 0, None))(model, coeffs, camera)
    verts = jax.vmap(screen_coords, in_axes=(0, 0, None))(faces.uv, faces.depth, camera)
    out = jax.vmap(lambda v, c, bg: render_mesh(v, c, model.tris, size, size, bg))(verts, faces.colors, photos)
    mask = lax.stop_gradient(jax.vmap(partial(losses.region_mask, model))(out.fragments.tri_id))
    lm = jnp.stack([faces.landmarks[..., 0], size - 1 - faces.landmarks[..., 1]], axis=-1)
    return Rendered(out.composite, out.image, out.mask, mask, lm), faces.albedo


def weak_terms(model: FaceModel, coeffs: Coeffs, photos, landmarks, spec: StepSpec):
    """Unweighted terms of the photo loss and the renders. photos f32[B, S, S, 3] 0-1."""
    r, albedo = render_batch(model, coeffs, photos, spec.camera)
    terms = {
        "photo": losses.photometric_loss(r.image, photos, r.mask),
        "landmark": landmark_term(r.landmarks, landmarks),
        "reg": losses.coeff_regularizer(coeffs, spec.weights),
        "albedo": losses.albedo_regularizer(albedo, model.skin_mask),
        "gamma": losses.lighting_regularizer(coeffs.gamma),
    }
    if spec.identity is not None:
        terms["identity"] = identity_loss(spec.identity.features, r.composite, photos)
    return terms, r


def supervised_terms(model: FaceModel, pred, true, landmarks, spec: StepSpec):
    """Unweighted terms of the synthetic loss. pred, true f32[B, 257]."""
    w = jnp.asarray(spec.coeff_weights, jnp.float32)
    lm = jax.vmap(keypoint_landmarks, in_axes=(None, 0, None))(model, Coeffs.from_vector(pred), spec.camera)
    return {"coeffs": jnp.mean(w * (pred - true) ** 2), "landmark": landmark_term(lm, landmarks)}


def total_loss(terms: dict, spec: StepSpec):
    w = spec.weights
    if spec.supervised:
        scale = {"coeffs": 1.0, "landmark": spec.landmark_weight_supervised}
    else:
        scale = {"photo": w.photo, "landmark": w.landmark, "reg": w.reg, "albedo": w.albedo, "gamma": w.gamma,
                 "identity": spec.identity.weight if spec.identity is not None else 0.0}
    return sum(scale[k] * v for k, v in terms.items())


def _loss(params, batch_stats, batch: Batch, model: FaceModel, spec: StepSpec):
    x = to_network_input(batch.images, spec.rnet)
    pred, updates = RNet(spec.rnet).apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
    pred = pred.astype(jnp.float32)
    if spec.supervised:
        terms = supervised_terms(model, pred, batch.coeffs, batch.landmarks, spec)
    else:
        photos = batch.images.astype(jnp.float32) / 255.0
        terms, _ = weak_terms(model, Coeffs.from_vector(pred), photos, batch.landmarks, spec)
    loss = total_loss(terms, spec)
    return loss, ({"loss": loss, **terms}, updates["batch_stats"])


@partial(jax.jit, static_argnames=("spec",))
def train_step(state: TrainState, batch: Batch, model: FaceModel, spec: StepSpec) -> tuple[TrainState, dict]:
    """One Adam step on `batch` (images u8[B, 224, 224, 3]); returns the new state and the loss
    terms (f32[] each). Place `batch` sharded and the rest replicated for data parallelism."""
    if spec.supervised and batch.coeffs is None:
        raise ValueError("supervised training needs batches with true coefficients (synthetic scenes)")
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, model, spec)
    updates, opt_state = optimizer(spec.learning_rate).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics


@partial(jax.jit, static_argnames=("spec",))
def evaluate(variables: dict, batch: Batch, model: FaceModel, spec: StepSpec) -> tuple[dict, Rendered]:
    """Eval-mode (running BatchNorm) prediction, renders and the photo/landmark terms of a batch."""
    pred = RNet(spec.rnet).apply(variables, to_network_input(batch.images, spec.rnet), train=False)
    photos = batch.images.astype(jnp.float32) / 255.0
    r, _ = render_batch(model, Coeffs.from_vector(pred.astype(jnp.float32)), photos, spec.camera)
    terms = {"photo": losses.photometric_loss(r.image, photos, r.mask),
             "landmark": landmark_term(r.landmarks, batch.landmarks)}
    if batch.coeffs is not None:
        terms["coeffs"] = jnp.mean(jnp.asarray(spec.coeff_weights) * (pred - batch.coeffs) ** 2)
    return terms, r


# ----------------------------------------------------------------------------- devices

def data_mesh(devices=None) -> Mesh:
    """1-D mesh with axis "data" over `devices` (default: all of the default backend's)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} does not split over the {mesh.size} devices; use a multiple "
                         f"of {mesh.size} (or fewer devices, e.g. CUDA_VISIBLE_DEVICES)")


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_manager(run_dir: str | Path, max_to_keep: int = 3):
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / "checkpoints").resolve()  # orbax wants absolute paths
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save_checkpoint(manager, state: TrainState, meta: dict) -> None:
    """Save `state` (params, batch_stats, opt_state, step) + JSON `meta` under its step; waits."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                 force=True)
    manager.wait_until_finished()


def restore_checkpoint(manager, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """(state, meta) of `step` (default: the latest), shaped and sharded like `like` (arrays or
    ShapeDtypeStructs; unsharded ones go to the first device)."""
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None) or default), like)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
    return TrainState(*out["state"]), dict(out["meta"])


# ----------------------------------------------------------------------------- init weights

def load_init(path: str | Path) -> tuple[dict, RNetConfig, dict]:
    """(variables, R-Net config, provenance) from converted weights (a folder with rnet.json,
    e.g. weights/rnet) or a previous run folder (its rnet/ export, else its latest checkpoint)."""
    path = Path(path).resolve()
    for folder in (path, path / "rnet"):
        if (folder / "rnet.json").is_file():
            variables, config = load_rnet(folder)
            source = json.loads((folder / "rnet.json").read_text()).get("source", {})
            return variables, config, {"path": str(folder), **source}
    if (path / "checkpoints").is_dir() and (path / "train.json").is_file():
        info = json.loads((path / "train.json").read_text())
        config = RNetConfig.from_json(info["rnet"])
        like = jax.eval_shape(partial(init_state, spec=StepSpec(config)), abstract_variables(config))
        state, _ = restore_checkpoint(checkpoint_manager(path), like)
        return state.variables, config, {"path": str(path), "run": info.get("provenance", {})}
    raise FileNotFoundError(
        f"--init {path}: expected converted R-Net weights (a folder with rnet.json, see `jaxface convert-weights`) "
        "or a jaxface training run folder (with rnet/ or checkpoints/ and train.json)")


# ----------------------------------------------------------------------------- the loop

class MetricsLog:
    """Appends rows of `METRIC_COLUMNS` to RUN/metrics.csv (header once)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file() or path.stat().st_size == 0:
            path.write_text(",".join(METRIC_COLUMNS) + "\n")

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in METRIC_COLUMNS])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def provenance(source: BatchSource, model: FaceModel, init_info: dict | None) -> dict:
    """What the weights were trained on; SYNTHETIC data or a synthetic face model is said loudly."""
    data = source.describe()
    synthetic = data["kind"] == "SYNTHETIC" or bool(model.synthetic)
    out = {"trained_by": "jaxface train", "data": data, "face_model": model.label,
           "synthetic": synthetic, "init": init_info}
    if synthetic:
        out["warning"] = SYNTHETIC_WARNING
    return out


def save_overlays(out_dir: Path, step: int, batch: Batch, rendered: Rendered) -> None:
    from jaxface.outputs import save_overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    image, coverage, lm = (np.asarray(a) for a in (rendered.image, rendered.coverage, rendered.landmarks))
    for i in range(len(batch.images)):
        save_overlay(out_dir / f"step_{step:07d}_{i}.png", np.asarray(batch.images[i]), image[i], coverage[i], lm[i])


class TrainResult(NamedTuple):
    state: TrainState
    run_dir: Path
    export_dir: Path


def train(config: TrainConfig, model: FaceModel, source: BatchSource, run_dir: str | Path, *,
          init: tuple[dict, RNetConfig, dict] | None = None, resume: bool = False,
          identity: IdentityLoss | None = None, devices=None, scene: SceneConfig | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train for `config.steps` steps (total, counting resumed ones) and export to RUN/rnet.

    init: (variables, R-Net config, provenance) from `load_init`; None = fresh R-Net (torch layout).
    resume: continue from the latest checkpoint in RUN (fresh start when there is none).
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if source.batch_size != config.batch_size:
        raise ValueError(f"the data source makes batches of {source.batch_size}, the config says {config.batch_size}")
    mesh = data_mesh(devices)
    check_batch_size(config.batch_size, mesh)
    manager = checkpoint_manager(run_dir, config.max_to_keep)
    if manager.latest_step() is not None and not resume:
        raise ValueError(f"{run_dir} already holds checkpoints (up to step {manager.latest_step()}); pass "
                              "--resume to continue that run, or choose a new --out folder")

    meta = {"seed": config.seed, "batch_size": config.batch_size, "supervised": config.supervised}
    resuming = resume and manager.latest_step() is not None
    if resuming:
        # The run's own R-Net layout and provenance; the checkpoint overwrites the variables.
        info = json.loads((run_dir / "train.json").read_text())
        rnet_config, init_info = RNetConfig.from_json(info["rnet"]), info["provenance"]["init"]
        variables = abstract_variables(rnet_config)
    elif init is not None:
        variables, rnet_config, init_info = init
    else:
        rnet_config, init_info = RNetConfig(), None
        variables = init_rnet(jax.random.key(config.seed), rnet_config)
    spec = make_spec(config, rnet_config, scene, identity)
    if resuming:
        like = jax.eval_shape(partial(init_state, spec=spec), variables)
        like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())), like)
        state, saved = restore_checkpoint(manager, like)
        for k, v in meta.items():
            if saved.get(k) != v:
                raise ValueError(f"cannot resume {run_dir}: it was trained with {k}={saved.get(k)!r}, now {v!r}; "
                                 "use the same settings (or a new --out folder)")
        log(f"resuming {run_dir} at step {int(state.step)} (data position {saved['position']} samples)")
    else:
        state = replicate(init_state(variables, spec), mesh)
    prov = provenance(source, model, init_info)
    (run_dir / "train.json").write_text(json.dumps(
        {"config": _jsonable(config), "rnet": rnet_config.to_json(), "provenance": prov}, indent=2) + "\n")
    if prov["synthetic"]:
        log(f"note: {SYNTHETIC_WARNING}")

    model = replicate(model, mesh)
    metrics_log = MetricsLog(run_dir / "metrics.csv")
    start = int(state.step)
    shard = batch_sharding(mesh)
    val_batch = source.validation_batch(config.val_images) if config.val_images and start < config.steps else None
    batches = prefetch(lambda s: to_device(source.batch(s), shard), start, config.steps, config.prefetch)
    t0 = t_last = time.perf_counter()
    n_last = start
    for step, batch in batches:
        state, metrics = train_step(state, batch, model, spec)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps or step == start:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            rate = (done - n_last) * config.batch_size / (now - t_last)
            t_last, n_last = now, done
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"non-finite loss at step {done}: {values}; lower the learning rate "
                                         "or check the data (landmarks, images)")
            metrics_log.write({"step": done, "split": "train", **values, "images_per_s": rate,
                               "seconds": now - t0})
            terms = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
            log(f"step {done}/{config.steps} loss {values['loss']:.5g} ({terms}) {rate:.2f} img/s"
                + (" (includes compile)" if step == start else ""))
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(manager, state, {**meta, "position": done * config.batch_size, "step": done})
        if val_batch is not None and ((config.val_every and done % config.val_every == 0) or done == config.steps):
            validate(state, replicate(val_batch, mesh), model, spec, run_dir, metrics_log)
    export = export_rnet(state, rnet_config, run_dir, prov)
    log(f"wrote {export}")
    return TrainResult(state, run_dir, export)


def validate(state: TrainState, batch: Batch, model: FaceModel, spec: StepSpec, run_dir: Path,
             metrics_log: MetricsLog) -> dict:
    """Eval-mode terms on the validation batch (logged as split "val") and overlays in RUN/val."""
    terms, rendered = evaluate(state.variables, batch, model, spec)
    values = {k: float(v) for k, v in terms.items()}
    step = int(state.step)
    metrics_log.write({"step": step, "split": "val", **values})
    save_overlays(run_dir / "val", step, jax.device_get(batch), rendered)
    return values


def export_rnet(state: TrainState, rnet_config: RNetConfig, run_dir: Path, prov: dict) -> Path:
    """The trained network in the inference format (`load_rnet`, `jaxface reconstruct --method rnet`)."""
    variables = jax.device_get(state.variables)
    return save_rnet(variables, rnet_config, run_dir / "rnet", source={**prov, "steps": int(state.step)})


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    return x


# ----------------------------------------------------------------------------- CLI

def train_cli(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface train",
        description="Train R-Net: weakly supervised on photos (--data, needs the Basel Face Model) or supervised "
        "on synthetic renders with known coefficients (--synthetic). Writes checkpoints, metrics.csv, "
        "validation overlays and the trained network (RUN/rnet, usable with `jaxface reconstruct --method rnet`).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder of photos, each with NAME.txt (5 or 68 points 'x y') beside it")
    src.add_argument("--synthetic", action="store_true",
                     help="supervised pre-training on synthetic renders (the embedded synthetic model unless --bfm); "
                     "the weights are recorded as trained on SYNTHETIC data")
    p.add_argument("--bfm", type=Path, default=None, help="Basel model folder (see `jaxface convert-bfm`)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--init", type=Path, default=None,
                   help="start from converted R-Net weights (e.g. weights/rnet) or a previous run folder")
    p.add_argument("--steps", type=int, default=1000, help="total steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="global batch, split over devices (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, the reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--val-every", type=int, default=0, help="validation overlays every N steps (default: at the end)")
    p.add_argument("--val-images", type=int, default=4, help="validation images (0: no validation)")
    p.add_argument("--landmark-weight", type=float, default=0.0,
                   help="--synthetic: weight of the landmark term beside the coefficient loss (default 0)")
    p.add_argument("--no-augment", action="store_true", help="photos: no shift/scale/colour augmentation")
    args = p.parse_args(argv)

    from jaxface.model.bfm import load_face_model

    if args.synthetic:
        if args.bfm is not None:
            model = load_face_model(args.bfm)
        else:
            from jaxface.model.synthetic import synthetic_face_model

            model = synthetic_face_model(0)
    else:
        # Refused rather than warned: a network fitted to photos through the synthetic model
        # regresses coefficients of a made-up face space; exported in the inference format it
        # would look like a real reconstruction model.
        from jaxface import paths
        from jaxface.model.bfm import bfm_available

        if args.bfm is None and not bfm_available():
            raise FileNotFoundError(
                "training on photos needs the Basel Face Model: download 01_MorphableModel.mat (BFM09) and "
                "Exp_Pca.bin, put them in a folder and pass --bfm FOLDER (or put them in "
                f"{paths.bfm_dir()}; `jaxface convert-bfm` converts them once). The embedded synthetic model "
                "only supports supervised pre-training: `jaxface train --synthetic`.")
        model = load_face_model(args.bfm)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         supervised=args.synthetic, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, max_to_keep=args.keep, val_every=args.val_every,
                         val_images=args.val_images, landmark_weight_supervised=args.landmark_weight)
    if args.synthetic:
        source = SyntheticSource(model, args.batch_size, args.seed)
    else:
        source = PhotoDataset(args.data, args.batch_size, args.seed,
                              AugmentConfig.none() if args.no_augment else AugmentConfig())
    init = None
    if args.init is not None:
        if args.resume and (args.out / "checkpoints").is_dir():
            print(f"--resume: continuing {args.out}; --init {args.init} is ignored", file=sys.stderr)
        else:
            init = load_init(args.init)
    train(config, model, source, args.out, init=init, resume=args.resume)
    return 0
