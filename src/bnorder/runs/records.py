"""A run's folder and its files: ``OUT/<scheme>/seed<k>/`` with ``run.json`` (a ``RunInfo``),
``metrics.csv`` (one ``EpochRow`` per epoch), ``variance_shift.csv`` and checkpoints.

This module is the only reader and writer of those files. Every write is whole or not at all
(files.py): a crash never leaves a file half-written; metrics.csv grows one whole, flushed line
at a time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from bnorder import __version__
from bnorder.core.files import atomic_write, atomic_write_text, file_lock, read_bounded
from bnorder.nets.schemes import Scheme
from bnorder.runs.config import CONFIG_BYTES, parse_yaml

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
SHIFT_FILE = "variance_shift.csv"
CONFIG_FILE = "config.yaml"
CHECKPOINT_LAST = "checkpoint.pt"


class Status(str, Enum):
    """How a run stands (run.json ``status``), or how one attempt at it ended."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"  # the training loss stopped being finite
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: resumable
    # outcomes of an attempt that leave the run's files as they were
    SKIPPED = "skipped"  # final already, with this config
    BUSY = "busy"  # another process holds its lock
    CONFLICT = "conflict"  # another process wrote a run of another config there meanwhile

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{status}" is its value on every Python version

    @property
    def final(self) -> bool:
        """Not trained again: a diverged run diverges again when rerun (on CPU, at the same
        epoch), like a completed one."""
        return self in (Status.COMPLETED, Status.DIVERGED)

    @property
    def sweep_goes_on(self) -> bool:
        """Whether a sweep started with --fail-fast starts more runs after this one."""
        return self in (Status.COMPLETED, Status.SKIPPED, Status.BUSY)


class Outcome(NamedTuple):
    """How one attempt at a run ended: its status and, where useful, why."""

    status: Status
    detail: str = ""


# ---------------------------------------------------------------- epoch rows

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
# Empty where not measured: loss and accuracy in eval mode on the fixed training sample (every
# epoch, unless train.vshift_sample is 0), the variance shift on epochs it was measured (with BN
# layers), the re-calibrated figures on the last row of runs with train.recalibrate_bn.
DIAGNOSTIC_COLUMNS = [
    "train_eval_loss",
    "train_eval_acc",
    "vshift_max",
    "vshift_mean",
    "test_loss_recalibrated",
    "test_acc_recalibrated",
    "vshift_max_recalibrated",
    "vshift_mean_recalibrated",
]
SHIFT_COLUMNS = ["epoch", "layer", "name", "running_var", "real_var", "shift", "recalibrated"]


@dataclass(frozen=True)
class Recalibrated:
    """A trained model's test figures and variance shift after BN re-calibration."""

    test_loss_recalibrated: float
    test_acc_recalibrated: float
    vshift_max_recalibrated: float | None = None
    vshift_mean_recalibrated: float | None = None


@dataclass(frozen=True)
class EpochRow:
    """One epoch's figures: a line of metrics.csv (after the run's scheme, seed and grid
    values). Accuracies are fractions; the diagnostics are None where not measured.
    ``train_loss`` and ``train_acc`` are the epoch's running figures in train mode (dropout and
    augmentation on); ``train_eval_*`` are measured like the test figures, in eval mode."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    epoch_seconds: float
    images_per_second: float
    train_eval_loss: float | None = None
    train_eval_acc: float | None = None
    vshift_max: float | None = None
    vshift_mean: float | None = None
    test_loss_recalibrated: float | None = None
    test_acc_recalibrated: float | None = None
    vshift_max_recalibrated: float | None = None
    vshift_mean_recalibrated: float | None = None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochRow:
        """From a CSV line's or a checkpoint's dict; other keys (scheme, grid values) ignored."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})

    def recalibrated(self, figures: Recalibrated) -> EpochRow:
        return EpochRow(**{**asdict(self), **asdict(figures)})

    def to_dict(self) -> dict[str, Any]:
        """Its figures by name; the re-calibrated ones only where there are any."""
        after = {f.name for f in fields(Recalibrated)}
        return {k: v for k, v in asdict(self).items() if k not in after or v is not None}


# ---------------------------------------------------------------- run.json


@dataclass(frozen=True)
class Provenance:
    """Where and with what a run was made, saved beside its numbers."""

    device: str
    device_name: str
    host: str  # runs of one sweep may come from many machines
    bnorder: str
    torch: str
    torchvision: str
    python: str
    platform: str
    threads: int
    git_revision: str | None


@dataclass
class RunInfo:
    """run.json: what a run is (scheme, seed, config and its hashes), where it was made, and
    how it stands. Older versions' files load too: a key they lack takes its default. A status
    this version does not know (a newer one's, or none) reads as None: such a run is not done
    (with its own config it is resumed or trained again), and compare leaves it out."""

    name: str
    scheme: str
    ops: list[str]
    head: list[str]
    seed: int
    status: Status | None
    config_hash: str = ""  # the run's identity: equal hashes, comparable numbers
    experiment_hash: str = ""  # the same less scheme and seed: one per experiment
    started_at: str = ""
    resumed_from_epoch: int | None = None
    notes: list[str] = field(default_factory=list)
    epochs_completed: int = 0
    device: str = ""
    device_name: str = ""
    host: str = ""
    bnorder: str = ""
    torch: str = ""
    torchvision: str = ""
    python: str = ""
    platform: str = ""
    threads: int | None = None
    git_revision: str | None = None
    data_source: str = ""
    data_fingerprint: str = ""  # what it trained and tested on (empty: an older version's run)
    train_images: int | None = None
    test_images: int | None = None
    grid: dict[str, Any] = field(default_factory=dict)  # the grid point's values
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved config
    speed: dict[str, Any] | None = None  # device options as resolved, first step's time
    traceback: str | None = None  # where it failed
    error: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None  # over all its attempts
    final: dict[str, Any] | None = None  # the last epoch's row, with the grid values

    @property
    def order(self) -> Scheme:
        """The run's scheme as one value: ``ops`` and ``head`` as recorded, ``inner`` as the
        run's config holds it (none for schemes without it, and for runs of versions before)."""
        scheme = self.config.get("schemes", {}).get(self.scheme)
        inner = scheme.get("inner") if isinstance(scheme, dict) else None
        inner = tuple(inner) if isinstance(inner, list) else None
        return Scheme(tuple(self.ops), tuple(self.head), inner=inner)

    @classmethod
    def from_json(cls, data: Any) -> RunInfo:
        """Raises ValueError where ``data`` is not a run record."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        scheme, seed = data.get("scheme"), data.get("seed")
        if not isinstance(scheme, str) or not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("no scheme and seed")
        status = data.get("status")
        known = isinstance(status, str) and status in {s.value for s in Status}
        status = Status(status) if known else None
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("name", f"{scheme}/seed{seed}")
        values.setdefault("ops", [])
        values.setdefault("head", [])
        values = {**values, "status": status, "grid": data.get("grid") or {}}
        hints = typing.get_type_hints(cls)
        wrong = [k for k, v in values.items() if k != "status" and not _fits(v, hints[k])]
        if wrong:
            raise ValueError(f"{wrong[0]} is a {type(values[wrong[0]]).__name__}")
        if not all(isinstance(v, str | int | float | bool) for v in values["grid"].values()):
            raise ValueError("grid values are not plain values")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The record as run.json holds it: what a run has not reached yet (its end, its
        device options, a traceback) is left out rather than written as null."""
        data = asdict(self)
        data["status"] = self.status and self.status.value
        unreached = ["traceback"] if self.traceback is None else []
        if self.speed is None:
            unreached.append("speed")
        if self.status is Status.RUNNING:
            unreached += ["error", "finished_at", "wall_seconds", "final"]
        return {key: value for key, value in data.items() if key not in unreached}

    @property
    def done(self) -> bool:
        """Final: not to be trained again (see Status.final)."""
        return self.status is not None and self.status.final

    @property
    def epochs(self) -> Any:
        """The epochs its config asks for (None where the record lacks them)."""
        train = self.config.get("train") if isinstance(self.config, dict) else None
        return train.get("epochs") if isinstance(train, dict) else None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of a field's declared type (containers by their own type only;
    Any fits everything), so a damaged record is refused, not trusted."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return value is None if hint is type(None) else isinstance(value, origin)


def _git_revision() -> str | None:
    """The project's commit, where the package runs from a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        # --no-optional-locks: status must not take the repository's index.lock from under a
        # git command the user is running
        command = ["git", "--no-optional-locks", "-C", str(here), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
        return done.stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):  # the revision stands; call the tree clean
        dirty = ""
    return f"{revision}-dirty" if dirty else revision


def provenance(device: torch.device) -> Provenance:
    """This process's provenance, for a run on ``device``."""
    import torchvision  # here: slow to import, and needed only once a run starts

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return Provenance(
        device=str(device),
        device_name=name,
        host=platform.node(),
        bnorder=__version__,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        threads=torch.get_num_threads(),
        git_revision=_git_revision(),
    )


RUN_FILE_BYTES = 16 * 2**20  # a run.json is a few kB; a traceback in it may be long


def read_info(path: Path) -> RunInfo:
    """Raises OSError or ValueError where ``path`` is not a readable run record."""
    try:
        return RunInfo.from_json(json.loads(read_bounded(path, RUN_FILE_BYTES, "run.json")))
    except RecursionError:  # nested deeper than json can follow
        raise ValueError("nested too deeply") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- CSV files


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
    values = metrics.reindex(columns=DIAGNOSTIC_COLUMNS).apply(pd.to_numeric, errors="coerce")
    bad = [c for c in present if (values[c].isna() & metrics[c].notna()).any()]
    if bad:
        raise ValueError(f"non-numeric values in {bad}")
    accuracies = values[["train_eval_acc", "test_acc_recalibrated"]]
    if not all(accuracies[c].dropna().between(0, 1).all() for c in accuracies):
        raise ValueError("accuracies outside [0, 1]")
    metrics[present] = values[present]
    return metrics


def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The grid's dotted keys among a frame's columns (``model.dropout``…): metrics.csv and
    the tables made from it carry a grid run's values so."""
    return [c for c in frame.columns if "." in c]


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
    atomic_write_text(path, lines.getvalue())


class MetricsWriter:
    """metrics.csv, one complete, flushed line per epoch, so that the file always parses.

    Each line starts with the run's ``labels`` (scheme, seed, then its grid values, which are
    columns too). ``rows`` already done (a resumed run's) are written first, atomically, so
    that the file on disk is always either the old one or the new one.
    """

    def __init__(self, path: Path, labels: dict[str, Any], rows: list[EpochRow] = ()) -> None:
        self.labels = labels
        grid = [k for k in labels if k not in ("scheme", "seed")]
        self.columns = [*METRIC_COLUMNS[:2], *grid, *METRIC_COLUMNS[2:], *DIAGNOSTIC_COLUMNS]
        write_csv(path, [self.cells(row) for row in rows], self.columns)
        self._file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def cells(self, row: EpochRow) -> dict[str, Any]:
        """The line's values by column, as checkpoints keep them too."""
        return {**self.labels, **row.to_dict()}

    def write(self, row: EpochRow) -> None:
        self._writer.writerow(self.cells(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a kill at any instant leaves the previous checkpoint or the new one.
    Serialised in memory first, so that a full disk is an OSError naming the file (torch's
    own writer reports it as "unexpected pos")."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads tensors and plain containers only (``weights_only``): a checkpoint cannot run code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a bnorder checkpoint")
    return state


# ---------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunFolder:
    """``OUT/<scheme>/seed<k>``: where one run's files live, and how each is written."""

    path: Path

    @classmethod
    def of(cls, output: str | Path, scheme: str, seed: int) -> RunFolder:
        return cls(Path(output) / scheme / f"seed{seed}")

    @property
    def info_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def shift_file(self) -> Path:
        return self.path / SHIFT_FILE

    def lock(self) -> AbstractContextManager[bool]:
        """This run's lock, if no other process holds it; yields whether it got it. Beside
        the folder rather than in it, because a run restarted from scratch deletes its folder."""
        return file_lock(self.path.with_name(f".{self.path.name}.lock"), wait=False)

    def read_info(self) -> RunInfo | None:
        """The run's record; None where there is none or it cannot be read."""
        try:
            return read_info(self.info_file)
        except (OSError, ValueError):
            return None

    def write_info(self, info: RunInfo) -> None:
        write_json(self.info_file, info.to_json())

    def metrics(self, labels: dict[str, Any], rows: list[EpochRow]) -> MetricsWriter:
        """metrics.csv holding ``rows``, open to append the next epochs'."""
        return MetricsWriter(self.metrics_file, labels, rows)

    def write_shifts(self, rows: list[dict[str, Any]]) -> None:
        """variance_shift.csv, whole (so a resumed run's file matches its checkpoint)."""
        if rows:
            write_csv(self.shift_file, rows, SHIFT_COLUMNS)

    def remove_partials(self) -> None:
        """Temporary files an earlier attempt left (killed mid-write): only this run's lock
        holder writes here, so none is in use."""
        for partial in self.path.glob(".*.partial"):
            partial.unlink(missing_ok=True)

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, newest first (by time written: a checkpoint.pt left from an
        earlier keep setting is not always the newest epoch)."""
        found = self.path.glob("checkpoint*.pt")
        return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def save_checkpoint(self, state: dict[str, Any], epoch: int, keep: str) -> None:
        """``keep: all`` keeps a file per epoch; otherwise one file is replaced every epoch."""
        name = f"checkpoint-epoch{epoch}.pt" if keep == "all" else CHECKPOINT_LAST
        save_checkpoint(self.path / name, state)

    def drop_checkpoints(self) -> None:
        for path in self.checkpoints():
            path.unlink()

    def resume_point(
        self, config_hashes: Collection[str]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """The newest readable checkpoint of this very config, whose hash is one of
        ``config_hashes`` (it carries the metrics rows up to its epoch, so neither run.json nor
        metrics.csv need be intact), and notes on what was passed over; (None, notes) where
        nothing can be resumed."""
        notes: list[str] = []
        for path in self.checkpoints():
            try:
                state = load_checkpoint(path)
            except Exception as err:  # truncated, corrupt, foreign: try an older one
                notes.append(f"{path.name} unreadable ({err.__class__.__name__}), skipped")
                continue
            if state.get("config_hash") not in config_hashes:
                notes.append(f"{path.name} is of another config, skipped")
                continue
            return state, notes
        return None, notes

    def clear(self) -> None:
        """Delete the folder: the run starts from scratch."""
        if self.path.exists():
            shutil.rmtree(self.path)


# ---------------------------------------------------------------- finding runs


@dataclass
class RunRecord:
    """One run folder as found on disk."""

    path: Path
    info: RunInfo
    metrics: pd.DataFrame | None  # None when metrics.csv is missing or unreadable


def run_files(output: str | Path) -> Iterator[Path]:
    """The run.json of every run directly in a sweep's output folder."""
    return iter(sorted(Path(output).glob(f"*/seed*/{RUN_FILE}")))


def find_runs(root: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Every run folder below ``root``, and one message per file that could not be read.

    Damaged files are reported, never raised: one bad run must not hide the others.
    """
    records, problems = [], []
    for run_file in sorted(Path(root).rglob(RUN_FILE)):
        try:
            info = read_info(run_file)
            if info.status is None:
                raise ValueError("no status this version knows")
        except (OSError, ValueError) as err:
            problems.append(f"{run_file}: unreadable run file ({err.__class__.__name__})")
            continue
        metrics = None
        try:
            metrics = read_metrics(run_file.with_name(METRICS_FILE))
            if info.status is Status.COMPLETED and len(metrics) != info.epochs:
                raise ValueError(f"{len(metrics)} epochs of a completed {info.epochs}-epoch run")
        except (OSError, ValueError) as err:
            if info.status is Status.COMPLETED:
                problems.append(f"{run_file.with_name(METRICS_FILE)}: unreadable metrics ({err})")
            metrics = None
        records.append(RunRecord(run_file.parent, info, metrics))
    return records, problems


def declared_baseline(config: Any) -> str | None:
    """The baseline a resolved config (as read from config.yaml) declares: its ``baseline``,
    or, in files written before that key, the first scheme it lists; None if neither."""
    if not isinstance(config, dict):
        return None
    schemes = config.get("schemes")
    first = next(iter(schemes), None) if isinstance(schemes, dict) else None
    baseline = config.get("baseline") or first
    return baseline if isinstance(baseline, str) else None


def read_experiment_config(folder: Path) -> dict[str, Any] | None:
    """``folder/config.yaml`` as sweeps leave it, read as configs are (bounded, UTF-8, no
    alias bombs); None where there is none or it cannot be read."""
    path = folder / CONFIG_FILE
    try:
        config = parse_yaml(read_bounded(path, CONFIG_BYTES, "config").decode(), str(path))
    except (OSError, ValueError):  # ConfigError and FileRefused are ValueErrors
        return None
    return config if isinstance(config, dict) else None


def find_sweep_config(output: Path) -> dict[str, Any] | None:
    """The config.yaml of the sweep whose runs lie in ``output``: its own, or, for a grid
    point, the grid's, one folder up. None where neither is there."""
    for folder, grid in ((output, False), (output.parent, True)):
        config = read_experiment_config(folder)
        if config is not None and bool(config.get("grid")) == grid:
            return config
    return None


def find_declared_baseline(output: Path) -> str | None:
    """The baseline declared for the runs in a sweep's ``output`` folder (see
    ``find_sweep_config``). None where no config declares one."""
    return declared_baseline(find_sweep_config(output))


def declared_margin(config: dict[str, Any] | None) -> float | None:
    """The equivalence margin (points) a sweep's config.yaml declares; None in files written
    before the key (compare then uses its default)."""
    margin = (config or {}).get("equivalence_margin")
    ok = isinstance(margin, int | float) and not isinstance(margin, bool) and 0 < margin <= 100
    return float(margin) if ok else None
