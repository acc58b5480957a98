"""`failures.csv`: one row per photo that produced no result (file, stage, reason)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from jaxface.outputs.paths import atomic_output

FAILURE_COLUMNS = ("image", "stage", "message")


@dataclass(frozen=True)
class Failure:
    """One image that produced no result: which file, at which stage, and why."""

    image: str
    stage: str
    message: str


def write_failures_csv(path: str | os.PathLike, rows) -> Path:
    """Write `failures.csv` (header image,stage,message; one row per Failure) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for r in rows:
        writer.writerow([str(r.image), r.stage, " ".join(str(r.message).split())])  # one line per row
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def read_failures_csv(path: str | os.PathLike) -> list[Failure]:
    """The rows of a `failures.csv` written by `write_failures_csv`."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != FAILURE_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(FAILURE_COLUMNS)}")
        return [Failure(*row) for row in reader if len(row) == 3]


@dataclass
class FailureLog:
    """Failures of a batch run, collected as they happen; `write` rewrites the csv atomically."""

    rows: list[Failure] = field(default_factory=list)

    def add(self, image: str | os.PathLike, stage: str, error: BaseException | str) -> Failure:
        msg = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        row = Failure(str(image), stage, msg)
        self.rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: str | os.PathLike) -> Path:
        return write_failures_csv(path, self.rows)
