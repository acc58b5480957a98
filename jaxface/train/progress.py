"""Progress of a run: metrics.csv rows, and a tqdm bar on a terminal or log lines elsewhere."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Callable

from jaxface.train.devices import to_host

METRIC_COLUMNS = ("step", "split", "loss", "photo", "landmark", "reg", "albedo", "gamma", "identity",
                  "coeffs", "images_per_s", "seconds")


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


class Progress:
    """Per-step metrics of a run from `start` to `steps`: a tqdm bar (s/step, images/s, ETA,
    loss terms) or a `log` line at each log point. `update` returns a log point's metrics.csv row."""

    def __init__(self, steps: int, batch_size: int, start: int, bar: bool, log: Callable[[str], None]):
        from tqdm import tqdm

        self.steps, self.batch_size, self.start, self.log = steps, batch_size, start, log
        self.t0 = self.t_row = self.t_step = time.perf_counter()
        self.n_row = start
        self.bar = None
        if bar:
            self.bar = tqdm(total=steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def update(self, done: int, metrics: dict, log_point: bool) -> dict | None:
        """After step `done` with its metrics (device scalars)."""
        if self.bar is None and not log_point:
            return None  # no host sync between log points
        values = {k: float(v) for k, v in to_host(metrics).items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"non-finite loss at step {done}: {values}; lower the learning rate "
                                     "or check the data (landmarks, images)")
        now = time.perf_counter()
        terms = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
        if self.bar is not None:
            seconds, self.t_step = now - self.t_step, now
            self.bar.set_postfix_str(f"{seconds:.3g} s/step, {self.batch_size / seconds:.3g} img/s, "
                                     f"loss {values['loss']:.4g} ({terms})", refresh=False)
            self.bar.update(1)
        if not log_point:
            return None
        rate = (done - self.n_row) * self.batch_size / (now - self.t_row)
        self.t_row, self.n_row = now, done
        if self.bar is None:
            self.log(f"step {done}/{self.steps} loss {values['loss']:.5g} ({terms}) {rate:.2f} img/s"
                     + (" (includes compile)" if done == self.start + 1 else ""))
        return {"step": done, "split": "train", **values, "images_per_s": rate, "seconds": now - self.t0}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
