"""A run's folder and the sweep's around it: ``OUT/<scheme>/seed<k>/`` with ``run.json`` (a
``RunInfo``, records.py), ``metrics.csv`` (one ``EpochRow`` per epoch, metrics.py),
``variance_shift.csv`` and checkpoints; the sweep's ``config.yaml`` beside the scheme folders.

This module says where each file lies and reads the folders back; every write is whole or not
at all (files.py): a crash never leaves a file half-written, and metrics.csv grows one whole,
flushed line at a time.
"""

from __future__ import annotations

import io
import math
import shutil
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnorder.core.files import (
    CHECKPOINT_BYTES,
    FileRefused,
    atomic_write,
    file_lock,
    open_bounded,
    read_bounded,
)
from bnorder.runs.config import CONFIG_BYTES, parse_yaml
from bnorder.runs.metrics import (
    SHIFT_COLUMNS,
    EpochRow,
    MetricsWriter,
    RunMetrics,
    check_metrics,
    read_run_metrics,
    write_csv,
)
from bnorder.runs.records import RunInfo, Status, read_info, write_json

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
SHIFT_FILE = "variance_shift.csv"
CONFIG_FILE = "config.yaml"
CHECKPOINT_LAST = "checkpoint.pt"


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a kill at any instant leaves the previous checkpoint or the new one.
    Serialised in memory first, so that a full disk is an OSError naming the file (torch's
    own writer reports it as "unexpected pos")."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads tensors and plain containers only (``weights_only``): a checkpoint cannot run code.
    Read as every file is (``open_bounded``): a FIFO, a device or a folder is refused, not
    waited on. Raises FileRefused, OSError or what torch raises on a damaged file."""
    with open_bounded(path, CHECKPOINT_BYTES, "checkpoint") as handle:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a bnorder checkpoint")
    return state


def checkpoint_fault(state: dict[str, Any], epochs: int) -> str | None:
    """Why ``state``, readable and of the right config, cannot be what a run of ``epochs``
    epochs left after one of them (forged or rotten); None where it passes every check."""
    epoch, rows = state.get("epoch"), state.get("rows")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= epochs:
        return f"epoch {epoch!r} is not one of 1…{epochs}"
    if not isinstance(rows, list) or len(rows) != epoch:
        return f"{len(rows) if isinstance(rows, list) else 'no'} rows for epoch {epoch}"
    try:
        check_metrics(_row_columns(rows))
    except (ValueError, TypeError, AttributeError) as err:
        return f"its rows: {err}"
    optimizer = state.get("optimizer")
    moments = optimizer.get("state", {}) if isinstance(optimizer, dict) else {}
    if not (_finite_tensors(state.get("model")) and _finite_tensors(moments)):
        return "non-finite weights"  # training on would only carry them on: diverged for good
    return None


def _row_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A checkpoint's rows as metrics.csv's columns would read (a figure not measured: NaN)."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [_cell(row.get(name)) for row in rows] for name in names}


def _cell(value: Any) -> Any:
    return math.nan if value is None else value


def _finite_tensors(value: Any) -> bool:
    """Whether every floating-point tensor in ``value`` (nested dicts) is finite."""
    if isinstance(value, dict):
        return all(_finite_tensors(v) for v in value.values())
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return bool(torch.isfinite(value).all())
    return True


def _remove(path: Path) -> None:
    """A file, or a folder left where a file belongs (a checkpoint's name): in a run folder,
    which only its lock holder writes, nothing is kept that bnorder did not write."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
        earlier keep setting is not always the newest epoch). A link's own time: bnorder
        writes none, and the time of what it points to (a device, nothing) says nothing."""
        found = self.path.glob("checkpoint*.pt")
        return sorted(found, key=lambda p: p.lstat().st_mtime_ns, reverse=True)

    def save_checkpoint(self, state: dict[str, Any], epoch: int, keep: str) -> None:
        """``keep: all`` keeps a file per epoch; otherwise one file is replaced every epoch.
        A folder of that name (which no rename can replace) is removed first."""
        path = self.path / (f"checkpoint-epoch{epoch}.pt" if keep == "all" else CHECKPOINT_LAST)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        save_checkpoint(path, state)

    def drop_checkpoints(self) -> None:
        for path in self.checkpoints():
            _remove(path)

    def resume_points(
        self, config_hashes: Collection[str], epochs: int, notes: list[str]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, contents) of each checkpoint of this very config, whose hash is one of
        ``config_hashes``, that passes every check for a run of ``epochs`` epochs, newest
        first; each passed over gets a line in ``notes`` saying why. Each carries the metrics
        rows up to its epoch, so neither run.json nor metrics.csv need be intact. A caller
        that cannot use one takes the next: an older one is worth more than starting afresh."""
        for path in self.checkpoints():
            try:
                state = load_checkpoint(path)
            except Exception as err:  # truncated, corrupt, foreign, a FIFO: try an older one
                why = str(err).removeprefix(f"{path}: ") if isinstance(err, FileRefused) else ""
                notes.append(f"{path.name} unreadable ({why or err.__class__.__name__}), skipped")
                continue
            if state.get("config_hash") not in config_hashes:
                notes.append(f"{path.name} is of another config, skipped")
                continue
            fault = checkpoint_fault(state, epochs)
            if fault is not None:
                notes.append(f"{path.name} fails a check ({fault}), skipped")
                continue
            yield path.name, state

    def resume_point(
        self, config_hashes: Collection[str], epochs: int
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """The newest checkpoint ``resume_points`` gives, and the notes on those passed over;
        (None, notes) where there is none."""
        notes: list[str] = []
        found = next(self.resume_points(config_hashes, epochs, notes), None)
        return (None if found is None else found[1]), notes

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
    metrics: RunMetrics | None  # None when metrics.csv is missing or unreadable


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
            problems.append(f"{run_file}: unreadable run file ({err})")  # names the key
            continue
        metrics = None
        try:
            metrics = read_run_metrics(run_file.with_name(METRICS_FILE))
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


def find_sweep_config(
    output: Path, read: Callable[[Path], dict[str, Any] | None] = read_experiment_config
) -> dict[str, Any] | None:
    """The config.yaml of the sweep whose runs lie in ``output``: its own, or, for a grid
    point, the grid's, one folder up. None where neither is there. ``read``: how a folder's
    config is read (a cached reader, where every grid point of a grid asks)."""
    for folder, grid in ((output, False), (output.parent, True)):
        config = read(folder)
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
