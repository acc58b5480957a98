"""Progress of a run: metrics.csv rows."""

from __future__ import annotations

import csv
from pathlib import Path

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
