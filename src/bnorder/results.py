"""Run folders and their files: ``OUT/<scheme>/seed<k>/metrics.csv`` and ``run.json``.

Files are written so that a crash never leaves one half-written: JSON through a temporary file
and an atomic rename, CSV one whole, flushed line at a time.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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
RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"


def run_dir(output: str | Path, scheme: str, seed: int) -> Path:
    return Path(output) / scheme / f"seed{seed}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write atomically: readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class MetricsWriter:
    """Appends one complete CSV row per epoch, flushed, so the file always parses."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: row[k] for k in METRIC_COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    import torch
    import torchvision

    from bnorder import __version__

    device_name = str(device)
    if getattr(device, "type", None) == "cuda":
        device_name = torch.cuda.get_device_name(device)
    return {
        "device": str(device),
        "device_name": device_name,
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
            info["scheme"], info["seed"], info["status"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{run_file}: unreadable run file ({err.__class__.__name__})")
            continue
        metrics = None
        metrics_file = run_file.with_name(METRICS_FILE)
        try:
            metrics = pd.read_csv(metrics_file)
            missing = set(METRIC_COLUMNS) - set(metrics.columns)
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
        except (OSError, ValueError, pd.errors.ParserError) as err:
            if info["status"] == "completed":
                problems.append(f"{metrics_file}: unreadable metrics ({err})")
            metrics = None
        records.append(RunRecord(run_file.parent, info, metrics))
    return records, problems
