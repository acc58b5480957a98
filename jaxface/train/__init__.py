"""Training R-Net: weakly supervised on photos (SPEC "Training losses") or supervised on
synthetic renders with known coefficients; orbax checkpoints, exact resume, data parallelism.

- `step`: the jitted train step (`StepSpec`, `TrainState`, loss terms, `evaluate`)
- `devices`: the data-parallel mesh and placements
- `multihost`: joining the processes of a multi-host run (`Cluster`, `initialize`)
- `checkpoints`: orbax save / restore of a run, `load_init` of starting weights
- `loop`: `TrainConfig` and `train` (checks, run folder, resume, validation, export)
- `progress`: metrics.csv and the progress bar / log lines
- `cli`: `jaxface train`
"""

from jaxface.train.checkpoints import checkpoint_manager, latest_step, load_init, restore_checkpoint, save_checkpoint
from jaxface.train.cli import train_cli
from jaxface.train.devices import DATA_AXIS, batch_sharding, check_batch_size, data_mesh, local_rows, replicate, to_host
from jaxface.train.loop import (RESUME_SETTINGS, SYNTHETIC_WARNING, TrainConfig, TrainResult, export_rnet, make_spec,
                                provenance, train, validate)
from jaxface.train.multihost import Cluster, ClusterError, initialize, is_main_process
from jaxface.train.progress import METRIC_COLUMNS, MetricsLog
from jaxface.train.step import (IdentityLoss, Rendered, StepSpec, TrainState, coefficient_weights, evaluate,
                                identity_loss, init_state, optimizer, render_batch, supervised_terms, train_step,
                                weak_terms)

__all__ = [
    "DATA_AXIS", "METRIC_COLUMNS", "RESUME_SETTINGS", "SYNTHETIC_WARNING", "Cluster", "ClusterError", "IdentityLoss",
    "MetricsLog", "Rendered", "StepSpec", "TrainConfig", "TrainResult", "TrainState", "batch_sharding",
    "check_batch_size", "checkpoint_manager", "coefficient_weights", "data_mesh", "evaluate", "export_rnet",
    "identity_loss", "init_state", "initialize", "is_main_process", "latest_step", "load_init", "local_rows",
    "make_spec", "optimizer", "provenance", "render_batch", "replicate", "restore_checkpoint", "save_checkpoint",
    "supervised_terms", "to_host", "train", "train_cli", "train_step", "validate", "weak_terms",
]
