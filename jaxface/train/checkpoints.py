"""Orbax checkpoints of a run (RUN/checkpoints/N/) and the weights a run starts from.

A checkpoint holds {state: params, batch_stats, opt_state, step; meta: JSON}. The meta
records the data position and the settings the state was trained with, which `--resume`
compares against.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax

from jaxface.rnet import RNetConfig, load_rnet
from jaxface.rnet.checkpoint import META_NAME, weights_provenance
from jaxface.rnet.network import abstract_variables
from jaxface.train.step import StepSpec, TrainState, init_state

CHECKPOINTS = "checkpoints"


def checkpoint_manager(run_dir: str | Path, max_to_keep: int = 3, create: bool = True):
    """The run's manager; creates RUN/checkpoints (with several processes, all must call it:
    creating is a barrier)."""
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINTS).resolve()  # orbax wants absolute paths
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create))


def latest_step(run_dir: str | Path) -> int | None:
    """The latest checkpointed step of a run, None when it has none; creates nothing."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return None
    return checkpoint_manager(run_dir, create=False).latest_step()


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
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None) or default), like)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                         meta=ocp.args.JsonRestore()))
    return TrainState(*out["state"]), dict(out["meta"])


def restore_meta(manager, step: int) -> dict:
    """The JSON meta of checkpoint `step` alone (no arrays are read)."""
    import orbax.checkpoint as ocp

    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def load_init(path: str | Path) -> tuple[dict, RNetConfig, dict]:
    """(variables, R-Net config, provenance) from converted weights (a folder with rnet.json,
    e.g. weights/rnet) or a previous run folder (its rnet/ export, else its latest checkpoint)."""
    path = Path(path).resolve()
    for folder in (path, path / "rnet"):
        if (folder / META_NAME).is_file():
            variables, config = load_rnet(folder)
            return variables, config, {"path": str(folder), **weights_provenance(folder)}
    if (path / CHECKPOINTS).is_dir() and (path / "train.json").is_file():
        info = json.loads((path / "train.json").read_text())
        config = RNetConfig.from_json(info["rnet"])
        like = jax.eval_shape(partial(init_state, spec=StepSpec(config)), abstract_variables(config))
        state, _ = restore_checkpoint(checkpoint_manager(path), like)
        return state.variables, config, {"path": str(path), "run": info.get("provenance", {})}
    raise FileNotFoundError(
        f"--init {path}: expected converted R-Net weights (a folder with rnet.json, see `jaxface convert-weights`) "
        "or a jaxface training run folder (with rnet/ or checkpoints/ and train.json)")
