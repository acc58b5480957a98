"""A training run: the run folder, the loop, logging, validation and export.

Run folder:
    train.json        what was trained: config, R-Net config, data source, face model
    metrics.csv       step, split, loss terms, images/s (appended on resume)
    checkpoints/N/    orbax (`jaxface.train.checkpoints`); meta: data position, seed
    val/              overlays of the validation images (step_NNNNNNN_I.png)
    rnet/             the trained network in the inference format (`save_rnet`)

Resume: batches are pure functions of (seed, step) (`jaxface.data`), so the iterator state
is the step; `resume=True` restores the latest checkpoint and continues the identical stream.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface.camera import Camera
from jaxface.data import Batch, BatchSource, prefetch, to_device
from jaxface.losses import LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.rnet import RNetConfig, init_rnet, save_rnet
from jaxface.rnet.checkpoint import face_model_source
from jaxface.rnet.network import abstract_variables
from jaxface.synth_data import SceneConfig
from jaxface.train.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jaxface.train.devices import batch_sharding, check_batch_size, data_mesh, replicate
from jaxface.train.progress import MetricsLog
from jaxface.train.step import (IdentityLoss, Rendered, StepSpec, TrainState, coefficient_weights, evaluate,
                                init_state, train_step)

SYNTHETIC_WARNING = ("trained on SYNTHETIC renders: a pre-training / demonstration network, "
                     "not a model for reconstructing real faces")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. `every` values are in steps; val_every = 0 validates only at the end,
    val_images = 0 never. landmark_weight_supervised: the landmark term of synthetic
    pre-training, off by default: at the photo loss's weight it made a fresh network's loss
    jump in the first steps, while the coefficient loss alone falls steadily."""

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


def make_spec(config: TrainConfig, rnet: RNetConfig, scene: SceneConfig | None = None,
              identity: IdentityLoss | None = None, camera: Camera = Camera()) -> StepSpec:
    weights = tuple(float(w) for w in coefficient_weights(scene or SceneConfig()))
    return StepSpec(rnet, config.learning_rate, config.supervised, config.weights, weights,
                    config.landmark_weight_supervised, identity, camera)


def provenance(source: BatchSource, model: FaceModel, init_info: dict | None) -> dict:
    """What the weights were trained on; SYNTHETIC data or a synthetic face model is said loudly."""
    data = source.describe()
    synthetic = data["kind"] == "SYNTHETIC" or bool(model.synthetic)
    out = {"trained_by": "jaxface train", "data": data, **face_model_source(model), "synthetic": synthetic,
           "init": init_info}
    if synthetic:
        out["warning"] = SYNTHETIC_WARNING
    return out


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


def save_overlays(out_dir: Path, step: int, batch: Batch, rendered: Rendered) -> None:
    from jaxface.outputs import save_overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    image, coverage, lm = (np.asarray(a) for a in (rendered.image, rendered.coverage, rendered.landmarks))
    for i in range(len(batch.images)):
        save_overlay(out_dir / f"step_{step:07d}_{i}.png", np.asarray(batch.images[i]), image[i], coverage[i], lm[i])


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
