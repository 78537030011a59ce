"""Run folders and their files: ``OUT/<scheme>/seed<k>/metrics.csv`` and ``run.json``.

Files are written so that a crash never leaves one half-written: JSON through a temporary file
and an atomic rename, CSV one whole, flushed line at a time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

METRIC_COLUMNS = [
    "scheme",
    "seed",
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
]
# Empty where not measured: the variance shift on epochs it was measured (with BN layers),
# the re-calibrated figures on the last row of runs with train.recalibrate_bn.
DIAGNOSTIC_COLUMNS = [
    "vshift_max",
    "vshift_mean",
    "test_loss_recalibrated",
    "test_acc_recalibrated",
    "vshift_max_recalibrated",
    "vshift_mean_recalibrated",
]
SHIFT_COLUMNS = ["epoch", "layer", "name", "running_var", "real_var", "shift", "recalibrated"]
RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
SHIFT_FILE = "variance_shift.csv"
CONFIG_FILE = "config.yaml"


def run_dir(output: str | Path, scheme: str, seed: int) -> Path:
    return Path(output) / scheme / f"seed{seed}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write atomically: readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")  # one per writer
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV written by bnorder: whole lines only (pandas would read a line cut short as one
    with empty cells, which is wrong, not missing, data)."""
    text = path.read_text()
    if not text:
        raise ValueError("empty file")
    if not text.endswith("\n"):
        raise ValueError("the last line is cut short")
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.ParserError as err:
        raise ValueError(" ".join(str(err).split())) from None


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv, checked: every column present, numbers finite, accuracies in
    [0, 1], epochs 1, 2, 3… Raises ValueError naming what is wrong."""
    metrics = _read_csv(path)
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    numbers = metrics[METRIC_COLUMNS[1:]].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in numbers.columns if not numbers[c].map(math.isfinite).all()]
    if bad:
        raise ValueError(f"missing or non-numeric values in {bad}")
    if not numbers[["train_acc", "test_acc"]].stack().between(0, 1).all():
        raise ValueError("accuracies outside [0, 1]")
    if numbers["epoch"].tolist() != list(range(1, len(metrics) + 1)):
        raise ValueError("epochs are not 1, 2, 3…")
    metrics[numbers.columns] = numbers
    # diagnostics: absent in older runs, empty where not measured, numbers where present
    present = [c for c in DIAGNOSTIC_COLUMNS if c in metrics.columns]
    values = metrics[present].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in present if (values[c].isna() & metrics[c].notna()).any()]
    if bad:
        raise ValueError(f"non-numeric values in {bad}")
    if not values.get("test_acc_recalibrated", pd.Series(dtype=float)).dropna().between(0, 1).all():
        raise ValueError("accuracies outside [0, 1]")
    metrics[present] = values
    return metrics


def read_shifts(path: Path) -> pd.DataFrame:
    """A run's variance_shift.csv. Raises ValueError naming what is wrong."""
    shifts = _read_csv(path)
    missing = [c for c in SHIFT_COLUMNS if c not in shifts.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    numbers = shifts[["epoch", "layer", "running_var", "real_var", "shift"]]
    if numbers.apply(pd.to_numeric, errors="coerce").isna().any().any():
        raise ValueError("missing or non-numeric values")
    if shifts["recalibrated"].dtype != bool:
        raise ValueError("recalibrated is not True/False")
    return shifts


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A whole CSV file at once, atomically."""
    lines = io.StringIO()
    writer = csv.DictWriter(lines, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, lines.getvalue())


class MetricsWriter:
    """Appends one complete CSV row per epoch, flushed, so the file always parses.

    ``rows`` already done (a resumed run's) are written first, through a temporary file and
    a rename, so that the file on disk is always either the old one or the new one.
    """

    def __init__(self, path: Path, rows: list[dict[str, Any]] = (), grid: list[str] = ()) -> None:
        # a grid run's values are columns too, after scheme and seed
        self.columns = [*METRIC_COLUMNS[:2], *grid, *METRIC_COLUMNS[2:], *DIAGNOSTIC_COLUMNS]
        write_csv(path, [self._cells(row) for row in rows], self.columns)
        self._file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def _cells(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's values in column order; a diagnostic not measured stays empty."""
        return {k: row[k] if k not in DIAGNOSTIC_COLUMNS else row.get(k) for k in self.columns}

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow(self._cells(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_LAST = "checkpoint.pt"


def checkpoint_path(folder: Path, epoch: int, keep: str) -> Path:
    """``keep: all`` names a file per epoch; otherwise one file is replaced every epoch."""
    return folder / (f"checkpoint-epoch{epoch}.pt" if keep == "all" else CHECKPOINT_LAST)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Through a temporary file and a rename: a kill at any instant leaves the previous
    checkpoint or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename makes it the checkpoint
    os.replace(partial, path)


def checkpoints(folder: Path) -> list[Path]:
    """A run folder's checkpoint files, newest epoch first."""

    # by time written: a checkpoint.pt left from an earlier keep setting is not always newest
    return sorted(folder.glob("checkpoint*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads tensors and plain containers only (``weights_only``): a checkpoint cannot run code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a bnorder checkpoint")
    return state


# ---------------------------------------------------------------- locks


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` if no other process does; yields whether it got it.

    An OS lock (flock), so a process killed with -9 never leaves it stuck. Beside the run
    folder rather than in it, because a run restarted from scratch deletes its folder.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no locking between processes
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # a file system without flock (some NFS, Lustre): go on unlocked
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(output: str | Path, scheme: str, seed: int) -> Path:
    return Path(output) / scheme / f".seed{seed}.lock"


def _git_revision() -> str | None:
    """The project's commit, where the package runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def provenance(device: Any) -> dict[str, Any]:
    """Where and with what a run was made, saved beside its numbers."""
    import torchvision

    from bnorder import __version__

    device_name = str(device)
    if getattr(device, "type", None) == "cuda":
        device_name = torch.cuda.get_device_name(device)
    return {
        "device": str(device),
        "device_name": device_name,
        "host": platform.node(),  # runs of one sweep may come from many machines
        "bnorder": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "git_revision": _git_revision(),
    }


@dataclass
class RunRecord:
    """One run folder as found on disk."""

    path: Path
    info: dict[str, Any]
    metrics: pd.DataFrame | None  # None when metrics.csv is missing or unreadable


def find_runs(root: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Every run folder below ``root``, and one message per file that could not be read.

    Damaged files are reported, never raised: one bad run must not hide the others.
    """
    records, problems = [], []
    for run_file in sorted(Path(root).rglob(RUN_FILE)):
        try:
            info = read_json(run_file)
            if not (
                isinstance(info.get("scheme"), str)
                and isinstance(info.get("seed"), int)
                and isinstance(info.get("status"), str)
            ):
                raise ValueError("no scheme, seed and status")
        except (OSError, ValueError) as err:
            problems.append(f"{run_file}: unreadable run file ({err.__class__.__name__})")
            continue
        metrics = None
        metrics_file = run_file.with_name(METRICS_FILE)
        try:
            metrics = read_metrics(metrics_file)
            expected = info.get("config", {}).get("train", {}).get("epochs")
            if info["status"] == "completed" and len(metrics) != expected:
                raise ValueError(f"{len(metrics)} epochs of a completed {expected}-epoch run")
        except (OSError, ValueError) as err:
            if info["status"] == "completed":
                problems.append(f"{metrics_file}: unreadable metrics ({err})")
            metrics = None
        records.append(RunRecord(run_file.parent, info, metrics))
    return records, problems
