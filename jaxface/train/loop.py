"""A training run: checks, the run folder, the loop, progress, validation and export.

Run folder:
    train.json        config, R-Net config, provenance, and one `segments` entry per start or resume
    metrics.csv       step, split, loss terms, images/s (appended on resume)
    checkpoints/N/    orbax (`jaxface.train.checkpoints`); meta: data position and the run's settings
    val/              overlays of the validation images (step_NNNNNNN_I.png)
    rnet/             the trained network in the inference format (`save_rnet`)

Resume: batches are pure functions of (seed, step) (`jaxface.data`), so the iterator state
is the step; `resume=True` restores the latest checkpoint and continues the identical stream.
Settings that change the trajectory (`RESUME_SETTINGS`, the data, the face model) must match
the checkpoint's unless `override=True`.

Several processes (`jaxface.train.multihost`): every process runs `train` with the same
arguments; each loads its rows of every batch, all take part in each step, checkpoint,
validation and the export (orbax saves collectively), and process 0 alone writes train.json,
metrics.csv and val/ and logs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxface.camera import Camera
from jaxface.data import Batch, BatchSource, prefetch, to_device
from jaxface.identity.loss import Identity
from jaxface.losses import LossWeights
from jaxface.model.face_model import FaceModel
from jaxface.rnet import RNetConfig, init_rnet, save_rnet
from jaxface.rnet.checkpoint import face_model_source
from jaxface.rnet.network import abstract_variables
from jaxface.synth_data import SceneConfig
from jaxface.train.checkpoints import (checkpoint_manager, latest_step, restore_checkpoint, restore_meta,
                                      save_checkpoint)
from jaxface.train.devices import batch_sharding, check_batch_size, data_mesh, local_rows, replicate, to_host
from jaxface.train.multihost import check_same, is_main_process
from jaxface.train.progress import MetricsLog, Progress
from jaxface.train.step import (IdentityLoss, Rendered, StepSpec, TrainState, coefficient_weights, evaluate,
                                init_state, train_step)

SYNTHETIC_WARNING = ("trained on SYNTHETIC renders: a pre-training / demonstration network, "
                     "not a model for reconstructing real faces")
# TrainConfig fields a resumed run must keep (else its optimizer or data stream changes).
RESUME_SETTINGS = ("learning_rate", "batch_size", "seed", "supervised", "weights", "landmark_weight_supervised")


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


def is_photos(data: dict) -> bool:
    """Whether a source's `describe()` is of photos (anything but synthetic renders)."""
    return data.get("kind") != "SYNTHETIC"


def provenance(source: BatchSource, model: FaceModel, init_info: dict | None) -> dict:
    """What the weights were trained on; SYNTHETIC data or a synthetic face model is said loudly."""
    data = source.describe()
    trained_on = "photos" if is_photos(data) else "synthetic renders"
    synthetic = not is_photos(data) or bool(model.synthetic)
    out = {"trained_by": "jaxface train", "trained_on": trained_on, "data": data, **face_model_source(model),
           "synthetic": synthetic, "init": init_info}
    if synthetic:
        out["warning"] = SYNTHETIC_WARNING
    return out


def run_settings(config: TrainConfig, source: BatchSource, model: FaceModel, identity: Identity | None) -> dict:
    """What a resume must keep, as JSON stores it: `RESUME_SETTINGS`, the identity network,
    the data and the face model."""
    settings = {k: _jsonable(getattr(config, k)) for k in RESUME_SETTINGS}
    network = None
    if identity is not None:
        network = getattr(identity.net, "name", type(identity.net).__name__)
        if identity.source.get("sha256"):
            network += f" sha256:{identity.source['sha256'][:16]}"
    settings.update(identity_weight=identity.weight if identity is not None else None, identity_network=network,
                    data=source.describe(), face_model=model.label)
    return json.loads(json.dumps(settings))


def check_inputs(config: TrainConfig, model: FaceModel, source: BatchSource) -> None:
    """Refuse a data source that does not fit the config or the face model."""
    if source.batch_size != config.batch_size:
        raise ValueError(f"the data source makes batches of {source.batch_size}, the config says {config.batch_size}")
    data = source.describe()
    if is_photos(data) and model.synthetic:
        # A network fitted to photos through the synthetic model regresses coefficients of a
        # made-up face space; exported in the inference format it would pass for a real one.
        raise ValueError(
            f"training on photos needs the Basel Face Model, but the face model is {model.label}; pass --bfm "
            "with a folder holding the Basel model. The synthetic model only supports supervised "
            "pre-training on synthetic renders (`jaxface train --synthetic`)")
    if config.supervised and is_photos(data):
        raise ValueError("supervised training needs synthetic scenes with true coefficients (SyntheticSource); "
                         f"got a {data.get('kind')} source")
    if config.supervised and data.get("model") != model.label:
        raise ValueError(f"the synthetic scenes' coefficients are of {data.get('model')}, training uses "
                         f"{model.label}: use one face model for both")


class RunRecord:
    """RUN/train.json: the run's description, rewritten as its current segment advances."""

    def __init__(self, path: Path, info: dict, segment: dict):
        self.path, self.info, self.segment = path, info, segment
        info.setdefault("segments", []).append(segment)
        self._t0 = time.perf_counter()
        self.save()

    def advance(self, step: int, finished: bool = False) -> None:
        self.segment["end_step"] = step
        self.segment["seconds"] = round(time.perf_counter() - self._t0, 3)
        if finished:
            self.segment["finished"] = _now()
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.info, indent=2) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class TrainResult(NamedTuple):
    state: TrainState
    run_dir: Path
    export_dir: Path


def train(config: TrainConfig, model: FaceModel, source: BatchSource, run_dir: str | Path, *,
          init: tuple[dict, RNetConfig, dict] | None = None, resume: bool = False, override: bool = False,
          identity: Identity | None = None, devices=None, scene: SceneConfig | None = None,
          progress: bool | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train for `config.steps` steps (total, counting resumed ones) and export to RUN/rnet.

    init: (variables, R-Net config, provenance) from `load_init`; None = fresh R-Net (torch layout).
    resume: continue from the latest checkpoint in RUN (fresh start when there is none).
    override: let a resume change `RESUME_SETTINGS`, the data or the face model (recorded).
    identity: the perceptual term of photo training (`jaxface.identity.load_identity`); its
        network stays frozen.
    progress: a tqdm bar on stderr (default: when stderr is a terminal), else `log` lines.
    Everything is checked before RUN is created or written.
    """
    main = is_main_process()
    if not main:  # process 0 speaks for the run
        progress, log = False, _silent
    run_dir = Path(run_dir).resolve()
    check_inputs(config, model, source)
    if identity is not None and config.supervised:
        raise ValueError("the identity (perceptual) term belongs to the photo loss; supervised training on "
                         "synthetic scenes has none: pass identity=None")
    mesh = data_mesh(devices)
    check_batch_size(config.batch_size, mesh)
    last = latest_step(run_dir)
    if last is not None and not resume:
        raise ValueError(f"{run_dir} already holds checkpoints (up to step {last}); pass "
                         "--resume to continue that run, or choose a new --out folder")
    resuming = resume and last is not None
    if resuming:
        if not (run_dir / "train.json").is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: it holds checkpoints but no train.json")
        # The run's own R-Net layout and provenance; the checkpoint overwrites the variables.
        info = json.loads((run_dir / "train.json").read_text())
        rnet_config, init_info = RNetConfig.from_json(info["rnet"]), info["provenance"]["init"]
        variables = abstract_variables(rnet_config)
    else:
        info = {}
        variables, rnet_config, init_info = init if init is not None else (None, RNetConfig(), None)
    spec = make_spec(config, rnet_config, scene,
                     IdentityLoss(identity.net, identity.weight) if identity is not None else None)
    settings = run_settings(config, source, model, identity)
    check_same({"config": _jsonable(config), "settings": settings, "run": str(run_dir), "resume": resume,
                "override": override})
    changed = {}
    if resuming:
        manager = checkpoint_manager(run_dir, config.max_to_keep)
        like = jax.eval_shape(partial(init_state, spec=spec), variables)
        like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())), like)
        if last >= config.steps:
            log(f"nothing left to train: {run_dir} is at step {last} and --steps is {config.steps}; "
                "pass a larger --steps to continue it")
            state, _ = restore_checkpoint(manager, like, last)
            export = run_dir / "rnet"
            if not (export / "rnet.json").is_file():  # stopped between its last checkpoint and the export
                export = export_rnet(state, rnet_config, run_dir, info["provenance"])
            return TrainResult(state, run_dir, export)
        saved = restore_meta(manager, last)
        changed = changed_settings(saved, settings)
        if changed and not override:
            raise ValueError(f"cannot resume {run_dir} with other settings ({_describe(changed)}); use the run's "
                             "settings, pass --override to continue with the new ones, or choose a new --out folder")
        state, _ = restore_checkpoint(manager, like, last)
        log(f"resuming {run_dir} at step {last} (data position {saved['position']} samples)"
            + (f"; overriding {_describe(changed)}" if changed else ""))
    else:
        manager = None
        if variables is None:
            variables = init_rnet(jax.random.key(config.seed), rnet_config)
        state = replicate(init_state(variables, spec), mesh)
    start = int(state.step)
    val_batch = source.validation_batch(config.val_images) if config.val_images else None

    # Checked: from here on the run folder is written.
    run_dir.mkdir(parents=True, exist_ok=True)
    manager = manager or checkpoint_manager(run_dir, config.max_to_keep)
    prov = provenance(source, model, init_info)
    info.update(config=_jsonable(config), rnet=rnet_config.to_json(), provenance=prov)
    segment = {"start_step": start, "end_step": start, "steps": config.steps, "settings": settings,
               "started": _now(), "finished": None, "seconds": 0.0}
    if changed:
        segment["overridden"] = {k: {"was": a, "now": b} for k, (a, b) in changed.items()}
    record = RunRecord(run_dir / "train.json", info, segment) if main else None
    if prov["synthetic"]:
        log(f"note: {SYNTHETIC_WARNING}")

    model = replicate(model, mesh)
    identity_vars = replicate(identity.variables, mesh) if identity is not None else None
    metrics_log = MetricsLog(run_dir / "metrics.csv") if main else None
    shard = batch_sharding(mesh)
    rows = local_rows(shard, config.batch_size)
    batches = prefetch(lambda s: to_device(source.batch(s, rows), shard, config.batch_size), start, config.steps,
                       config.prefetch)
    meter = Progress(config.steps, config.batch_size, start, sys.stderr.isatty() if progress is None else progress, log)
    try:
        for step, batch in batches:
            state, metrics = train_step(state, batch, model, spec, identity_vars)
            done = step + 1
            row = meter.update(done, metrics, done % config.log_every == 0 or done == config.steps or step == start)
            if row is not None and main:
                metrics_log.write(row)
            if done % config.checkpoint_every == 0 or done == config.steps:
                save_checkpoint(manager, state, {"settings": settings, "position": done * config.batch_size,
                                                 "step": done})
                if main:
                    record.advance(done)
            if val_batch is not None and ((config.val_every and done % config.val_every == 0) or done == config.steps):
                validate(state, replicate(val_batch, mesh), model, spec, run_dir, metrics_log)
    finally:
        meter.close()
    export = export_rnet(state, rnet_config, run_dir, prov)
    if main:
        record.advance(int(state.step), finished=True)
    log(f"wrote {export}")
    return TrainResult(state, run_dir, export)


def changed_settings(saved_meta: dict, settings: dict) -> dict:
    """{name: (checkpoint's value, new value)} for settings that differ from a checkpoint's meta."""
    # Checkpoints written before "settings" existed stored seed, batch_size and supervised.
    saved = saved_meta.get("settings") or saved_meta
    return {k: (saved[k], settings[k]) for k in settings if k in saved and saved[k] != settings[k]}


def _describe(changed: dict) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())


def save_overlays(out_dir: Path, step: int, batch: Batch, rendered: Rendered) -> None:
    from jaxface.outputs import save_overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    image, coverage, lm = (np.asarray(a) for a in (rendered.image, rendered.coverage, rendered.landmarks))
    for i in range(len(batch.images)):
        save_overlay(out_dir / f"step_{step:07d}_{i}.png", np.asarray(batch.images[i]), image[i], coverage[i], lm[i])


def validate(state: TrainState, batch: Batch, model: FaceModel, spec: StepSpec, run_dir: Path,
             metrics_log: MetricsLog | None) -> dict:
    """Eval-mode terms on the validation batch (logged as split "val") and overlays in RUN/val;
    every process evaluates, those without a `metrics_log` write nothing."""
    terms, rendered = evaluate(state.variables, batch, model, spec)
    values = {k: float(v) for k, v in to_host(terms).items()}
    rendered = to_host(rendered)  # on every process: gathering may take all of them
    if metrics_log is not None:
        step = int(state.step)
        metrics_log.write({"step": step, "split": "val", **values})
        save_overlays(run_dir / "val", step, to_host(batch), rendered)
    return values


def export_rnet(state: TrainState, rnet_config: RNetConfig, run_dir: Path, prov: dict) -> Path:
    """The trained network in the inference format (`load_rnet`, `jaxface reconstruct --method rnet`).
    With several processes all must call it: orbax's save is collective (process 0 writes the arrays)."""
    variables = to_host(state.variables)
    return save_rnet(variables, rnet_config, run_dir / "rnet", source={**prov, "steps": int(state.step)})


def _silent(message: str) -> None:
    pass


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(x).items()}
    return x
