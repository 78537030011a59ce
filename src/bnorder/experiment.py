"""A sweep: every (scheme, seed) of a config, trained and written to its run folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from bnorder.config import (
    ConfigError,
    ExperimentConfig,
    GridPoint,
    build_config,
    config_to_dict,
    expand_grid,
)
from bnorder.data import (
    Cifar10,
    DataError,
    load_cifar10,
    locate_cifar10,
    make_loaders,
    missing_data,
)
from bnorder.results import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    SHIFT_COLUMNS,
    SHIFT_FILE,
    MetricsWriter,
    checkpoint_path,
    checkpoints,
    load_checkpoint,
    lock_path,
    provenance,
    read_json,
    run_dir,
    run_lock,
    save_checkpoint,
    write_csv,
    write_json,
    write_text,
)
from bnorder.train import Diverged, EpochRow, Trainer, evaluate, resolve_device


class ResultsConflict(RuntimeError):
    """The output folder holds runs made from a different config."""


@dataclass(frozen=True)
class RunSpec:
    scheme: str
    ops: tuple[str, ...]
    head: tuple[str, ...]
    seed: int
    label: str = ""  # the grid point's folder, "" without a grid
    grid: tuple[tuple[str, str], ...] = ()  # the grid point's values, JSON-encoded (hashable)

    @property
    def name(self) -> str:
        return f"{self.label}/{self.scheme}/seed{self.seed}".lstrip("/")

    @property
    def grid_values(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.grid}


@dataclass
class SweepReport:
    output: Path
    completed: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)  # completed before, with this config
    busy: list[RunSpec] = field(default_factory=list)  # being trained by another process
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)  # failed or diverged
    wall_seconds: float = 0.0


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the sweep; ``runs`` are marked interrupted on disk."""

    def __init__(self, report: SweepReport, runs: list[RunSpec]) -> None:
        super().__init__(f"interrupted during {', '.join(run.name for run in runs) or 'start-up'}")
        self.report, self.runs = report, runs


class SweepCallback:
    """Progress hooks; the CLI overrides them to draw a live display. All default to no-ops.
    With several workers, the runs' events interleave (each run's stay in order)."""

    def on_sweep_start(self, runs: list[RunSpec], data: Cifar10 | None, where: str) -> None:
        """``data``: None where it is loaded elsewhere only (a Ray cluster); ``where``: the
        device or workers, in words."""

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        pass

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        pass

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        pass

    def on_run_end(self, run: RunSpec, status: str, detail: str = "") -> None:
        pass


def plan_runs(config: ExperimentConfig, point: GridPoint | None = None) -> list[RunSpec]:
    """Seed-major, so that an early stop still leaves every scheme with the same seeds."""
    label = point.label if point else ""
    grid = tuple((k, json.dumps(v)) for k, v in point.values.items()) if point else ()
    return [
        RunSpec(name, tuple(spec.ops), tuple(spec.head), seed, label, grid)
        for seed in config.seeds
        for name, spec in config.schemes.items()
    ]


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 0) of ``count`` disjoint parts of a sweep's runs."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ConfigError(f"--shard: {text!r} is not K/N (for example 0/4)")
        index, count = int(match[1]), int(match[2])
        if not 0 <= index < count:
            raise ConfigError(f"--shard: {text!r}: K counts from 0 and must be below N")
        return cls(index, count)

    @classmethod
    def from_slurm(cls, environ: Mapping[str, str]) -> Shard | None:
        """This array task's shard, where a Slurm job array runs: task IDs first, first+step,
        … are shards 0, 1, … of SLURM_ARRAY_TASK_COUNT."""
        if "SLURM_ARRAY_TASK_ID" not in environ:
            return None
        try:
            task = int(environ["SLURM_ARRAY_TASK_ID"])
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
            first = int(environ.get("SLURM_ARRAY_TASK_MIN") or 0)
            step = int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"SLURM_ARRAY_TASK_*: unreadable ({err}); pass --shard K/N") from None
        index, off = divmod(task - first, step)
        if off or not 0 <= index < count:
            raise ConfigError(
                f"SLURM_ARRAY_TASK_ID={task}: not one of {count} evenly spaced array tasks from "
                f"{first}; pass --shard K/N"
            )
        return cls(index, count)


def _shard_key(run: RunSpec) -> str:
    """What names a run, whatever the order of the config's keys and lists."""
    named = [sorted(run.grid_values.items()), run.scheme, run.seed]
    return hashlib.sha256(json.dumps(named).encode()).hexdigest()


def shard_runs(runs: list[RunSpec], shard: Shard) -> list[RunSpec]:
    """The shard's part of ``runs``: the runs ranked by a hash of their grid values, scheme and
    seed (not of the config's key order), then dealt round robin, so that the parts are
    disjoint, differ in size by at most one, and mix schemes (which differ in cost). A run's
    part depends on the whole plan: every shard must be given the same config and options."""
    ranked = sorted(runs, key=_shard_key)
    mine = set(ranked[shard.index :: shard.count])
    return [run for run in runs if run in mine]  # in the plan's (seed-major) order


def run_config(config: ExperimentConfig, run: RunSpec) -> dict[str, Any]:
    """One run's resolved config, saved in its run.json (the output folder is not part of it)."""
    resolved = config_to_dict(config)
    resolved["schemes"] = {run.scheme: {"ops": list(run.ops), "head": list(run.head)}}
    resolved["seeds"] = [run.seed]
    del resolved["output"]
    return resolved


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# Keys that do not change a run's numbers (where results go, where data lies, is cached or fetched)
# and the device as written (``auto``): the device type it resolved to takes its place.
NOT_IDENTITY = {
    "output",
    "data.root",
    "data.download",
    "data.cache_dir",
    "train.keep_checkpoints",
    "train.threads",  # changes only the order of float sums
    "device",
}
# A diverged run diverges again when rerun (on CPU, at the same epoch): like a completed one,
# it is not trained again.
FINAL = ("completed", "diverged")


def run_identity(config: dict[str, Any], device_type: str) -> dict[str, Any]:
    """What makes two runs comparable, flattened to dotted keys: a run's config, less the keys
    that do not change its numbers, plus the type of device it ran on."""
    flat = {k: v for k, v in _flatten(config).items() if k not in NOT_IDENTITY}
    if flat.get("data.pipeline", "device") == "device":
        flat.pop("data.workers", None)  # only the torchvision pipeline has workers
    return {**flat, "device": device_type}


def experiment_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A run's identity less its scheme and seed: equal for every run of one experiment."""
    return {k: v for k, v in identity.items() if not k.startswith(("schemes.", "seeds"))}


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _check_output(
    config: ExperimentConfig, runs: list[RunSpec], device: torch.device, overwrite: bool
) -> set[RunSpec]:
    """The runs already completed with this very config (to skip).

    Raises ResultsConflict, before anything is trained or written, where the output folder
    holds runs of a different config: a run of this sweep (unless ``overwrite``), or any other
    run (always: its numbers would be compared with these as if they were alike).
    """
    planned = {(run.scheme, run.seed): run for run in runs}
    ours = experiment_identity(run_identity(config_to_dict(config), device.type))
    done, conflicts = set(), []
    for run_file in sorted(Path(config.output).glob(f"*/seed*/{RUN_FILE}")):
        try:
            info = read_json(run_file)
            stored = run_identity(info["config"], torch.device(info["device"]).type)
            key = (info["scheme"], info["seed"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            continue  # unreadable: rerun if planned, and compare skips it
        run = planned.get(key)
        if run is None:
            changed = differing_keys(experiment_identity(stored), ours)
            if changed:
                conflicts.append(f"{info['scheme']}/seed{info['seed']} ({', '.join(changed[:4])})")
            continue
        changed = differing_keys(stored, run_identity(run_config(config, run), device.type))
        if changed and not overwrite:
            conflicts.append(f"{run.name} ({', '.join(changed[:4])})")
        elif not changed and info.get("status") in FINAL:
            done.add(run)
    if conflicts:
        raise ResultsConflict(
            f"{config.output} holds runs made with a different config: {'; '.join(conflicts)}. "
            "Use another --out (--overwrite replaces runs of this sweep only)."
        )
    return done


def _write_experiment_config(config: ExperimentConfig) -> None:
    """OUT/config.yaml: the resolved config, its schemes and seeds merged with those of earlier
    sweeps into the same folder (which _check_output found alike in every other key)."""
    path = Path(config.output) / CONFIG_FILE
    resolved = config_to_dict(config)
    try:
        earlier = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        earlier = None
    if isinstance(earlier, dict):
        resolved["schemes"] = {**(earlier.get("schemes") or {}), **resolved["schemes"]}
        resolved["seeds"] = sorted({*(earlier.get("seeds") or []), *resolved["seeds"]})
    write_text(path, yaml.safe_dump(resolved, sort_keys=False))


def _resume_point(folder: Path, config_hash: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest readable checkpoint of this very config in ``folder`` (it carries the metrics
    rows up to its epoch, so neither run.json nor metrics.csv need be intact), and notes on
    what was skipped; (None, notes) where nothing can be resumed."""
    notes: list[str] = []
    for path in checkpoints(folder):
        try:
            state = load_checkpoint(path)
        except Exception as err:  # truncated, corrupt, foreign: try an older one
            notes.append(f"{path.name} unreadable ({err.__class__.__name__}), skipped")
            continue
        if state.get("config_hash") != config_hash:
            notes.append(f"{path.name} is of another config, skipped")
            continue
        return state, notes
    return None, notes


def new_trainer(
    config: ExperimentConfig, run: RunSpec, data: Cifar10, device: torch.device
) -> Trainer:
    loaders = make_loaders(data, config.data, config.train, seed=run.seed, device=device)
    return Trainer(
        model_config=config.model,
        train_config=config.train,
        ops=run.ops,
        head=run.head,
        seed=run.seed,
        data=data,
        device=device,
        loaders=loaders,
    )


def _train_one(
    config: ExperimentConfig,
    run: RunSpec,
    data: Cifar10,
    device: torch.device,
    callback: SweepCallback,
    base_info: dict[str, Any],
    overwrite: bool,
) -> tuple[str, str]:
    """Train (or resume, or skip) one run under its lock; returns (status, detail)."""
    with run_lock(lock_path(config.output, run.scheme, run.seed)) as mine:
        if not mine:
            return "busy", "another process is training it"
        return _train_locked(config, run, data, device, callback, base_info, overwrite)


def _train_locked(
    config: ExperimentConfig,
    run: RunSpec,
    data: Cifar10,
    device: torch.device,
    callback: SweepCallback,
    base_info: dict[str, Any],
    overwrite: bool,
) -> tuple[str, str]:
    folder = run_dir(config.output, run.scheme, run.seed)
    started = time.perf_counter()
    resolved = run_config(config, run)
    identity = run_identity(resolved, device.type)
    config_hash = fingerprint(identity)
    try:
        previous = read_json(folder / RUN_FILE)
    except (OSError, ValueError):
        previous = None
    if previous is not None and previous.get("config_hash") == config_hash:
        if previous.get("status") in FINAL:  # done meanwhile by another process
            return "skipped", f"{previous['status']} in another process"
    elif previous is not None and not overwrite:  # written meanwhile by another config
        return "conflict", "another process wrote a run of a different config here"

    info: dict[str, Any] = {
        "name": run.name,
        "scheme": run.scheme,
        "ops": list(run.ops),
        "head": list(run.head),
        "seed": run.seed,
        "status": "running",
        "config_hash": config_hash,
        "experiment_hash": fingerprint(experiment_identity(identity)),
        "started_at": datetime.now(timezone.utc).isoformat(),
        "resumed_from_epoch": None,
        "notes": [],
        "epochs_completed": 0,
        **base_info,
        "config": resolved,
    }
    rows: list[EpochRow] = []
    earlier_seconds = 0.0
    status, detail = "completed", ""
    keep = config.train.keep_checkpoints
    try:
        trainer = new_trainer(config, run, data, device)
        state, info["notes"] = _resume_point(folder, config_hash)
        if state is not None:
            try:
                trainer.load_state_dict(state)
                rows = list(state["rows"])
            except Exception as err:  # readable but unusable: start afresh
                info["notes"].append(f"checkpoint of epoch {state['epoch']} unusable ({err})")
                trainer = new_trainer(config, run, data, device)
        if trainer.epoch == 0:
            rows = []
            if folder.exists():
                shutil.rmtree(folder)  # stale or replaced: the run starts from scratch
        elif previous is not None:
            earlier_seconds = previous.get("wall_seconds") or 0.0
        info["resumed_from_epoch"] = trainer.epoch or None
        info["epochs_completed"] = trainer.epoch
        info["speed"] = trainer.options
        callback.on_run_start(run, config.train.epochs, trainer.epoch)
        write_json(folder / RUN_FILE, info)
        grid = list(run.grid_values)

        def write_shifts() -> None:  # whole, so a resumed run's file matches its checkpoint
            if trainer.shift_rows:
                write_csv(folder / SHIFT_FILE, trainer.shift_rows, SHIFT_COLUMNS)

        write_shifts()
        with MetricsWriter(folder / METRICS_FILE, rows, grid) as metrics:
            while not trainer.done:
                epoch_row = trainer.run_epoch(lambda s, n: callback.on_step(run, s, n))
                row = {"scheme": run.scheme, "seed": run.seed, **run.grid_values, **epoch_row}
                metrics.write(row)
                rows.append(row)
                write_shifts()
                # files first, checkpoint second: a kill in between repeats the epoch
                checkpoint = {**trainer.state_dict(), "config_hash": config_hash, "rows": rows}
                save_checkpoint(checkpoint_path(folder, trainer.epoch, keep), checkpoint)
                info["epochs_completed"] = trainer.epoch
                info["speed"] = trainer.options
                write_json(folder / RUN_FILE, info)
                callback.on_epoch(run, row)
        if config.train.recalibrate_bn:
            # after the last checkpoint, which keeps the model as trained: a kill here
            # re-calibrates again on resume, with the same result
            try:
                rows[-1] = {**rows[-1], **trainer.recalibrate()}
            except Exception as err:  # the trained run stands; only its diagnostic is lost
                info["notes"].append(f"BN re-calibration failed ({err.__class__.__name__}: {err})")
            else:
                MetricsWriter(folder / METRICS_FILE, rows, grid).close()
                write_shifts()
    except Diverged as err:
        status, detail = "diverged", str(err)
    except KeyboardInterrupt:
        status, detail = "interrupted", f"stopped after epoch {len(rows)}"
        raise
    except Exception as err:  # one broken run must not end the sweep
        status, detail = "failed", f"{err.__class__.__name__}: {err}"
        info["traceback"] = traceback.format_exc()
    finally:
        info.update(
            status=status,
            error=detail or None,
            epochs_completed=len(rows),
            finished_at=datetime.now(timezone.utc).isoformat(),
            wall_seconds=round(earlier_seconds + time.perf_counter() - started, 3),
            final={k: v for k, v in rows[-1].items() if k not in ("scheme", "seed")}
            if rows
            else None,
        )
        with contextlib.suppress(OSError):  # a full disk must not hide the run's own error
            write_json(folder / RUN_FILE, info)
        callback.on_run_end(run, status, detail)
    if status == "completed" and keep == "none":  # only once completed is on disk
        for path in checkpoints(folder):
            path.unlink()
    return status, detail


@dataclass
class Plan:
    """What a sweep will do, checked before any training."""

    runs: list[RunSpec]  # this shard's runs (all of them without a shard)
    device: torch.device
    done: set[RunSpec]  # completed earlier with this config: skipped
    data: str  # where the data will come from, in words
    configs: dict[str, ExperimentConfig]  # grid label → that point's config ("" without grid)
    total: int  # runs in the whole sweep, all shards together
    shard: Shard | None = None


def check_experiment(
    config: ExperimentConfig,
    *,
    overwrite: bool = False,
    shard: Shard | None = None,
    device: torch.device | None = None,
    locate: Callable[[str], tuple[str, Path] | None] = locate_cifar10,
) -> Plan:
    """Every check that needs no training: the device exists, the data is there (or may be
    downloaded), the output folder is a folder and holds no runs of another config.
    ``device``: where the runs will train, if not ``config.device`` here (workers, a cluster);
    ``locate``: finds the data where the runs will read it.
    Raises ConfigError, DataError or ResultsConflict."""
    device = device or resolve_device(config.device)
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} exists and is not a folder")
    runs: list[RunSpec] = []
    done: set[RunSpec] = set()
    configs = {}
    for point in expand_grid(config):
        point_runs = plan_runs(point.config, point if config.grid else None)
        done |= _check_output(point.config, point_runs, device, overwrite)
        runs += point_runs
        configs[point.label] = point.config
    runs.sort(key=lambda run: config.seeds.index(run.seed))  # seed-major across the grid too
    total = len(runs)
    if shard is not None:
        runs = shard_runs(runs, shard)
    found = locate(config.data.root)
    if found is not None:
        data = f"{found[0]} at {found[1]}"
    elif config.data.download:
        data = f"to be downloaded into {config.data.root}"
    else:
        raise missing_data(Path(config.data.root))
    return Plan(runs, device, done & set(runs), data, configs, total, shard)


@dataclass(frozen=True)
class Job:
    """One run as an executor gets it: all that a fresh process needs to train it."""

    config: ExperimentConfig  # the run's grid point
    run: RunSpec
    overwrite: bool = False


def load_data(config: ExperimentConfig, loaded: dict[str, Cifar10]) -> Cifar10:
    """The config's data, loaded once per data config into ``loaded`` (a grid over data keys
    loads each once)."""
    key = config.data.model_dump_json()
    if key not in loaded:
        loaded[key] = load_cifar10(config.data)
    return loaded[key]


def train_job(
    job: Job, device: torch.device, callback: SweepCallback, loaded: dict[str, Cifar10]
) -> tuple[str, str]:
    """Train one run in this process, on ``device``, under its lock; returns (status, detail).
    Any executor ends here, so that a run's files are alike wherever it trained."""
    data = load_data(job.config, loaded)
    base_info = {
        **provenance(device),
        "data_source": data.source,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "grid": job.run.grid_values,
    }
    return _train_one(job.config, job.run, data, device, callback, base_info, job.overwrite)


# Statuses after which a sweep goes on even with --fail-fast.
FINE = ("completed", "skipped", "busy")


class Executor(Protocol):
    """Where a sweep's runs train: this process, local worker processes, a Ray cluster."""

    where: str  # in words, for the progress display
    local: bool  # runs read this machine's files

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[tuple[Job, str, str]]:
        """Train ``jobs``, relaying their progress to ``callback`` in this process, and yield
        each one's (status, detail) as it ends. With ``fail_fast``, start no run after one that
        is not FINE. Ctrl-C: mark the runs in progress interrupted, then raise
        KeyboardInterrupt."""
        ...


class InProcess:
    """One run after another in this process: the default, and ``--workers 1``."""

    def __init__(self, device: torch.device, loaded: dict[str, Cifar10] | None = None) -> None:
        self.device, self.where, self.local = device, str(device), True
        self.loaded = {} if loaded is None else loaded

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[tuple[Job, str, str]]:
        for job in jobs:
            status, detail = train_job(job, self.device, callback, self.loaded)
            yield job, status, detail
            if fail_fast and status not in FINE:
                return


class _NoteEnds(SweepCallback):
    """Relays every event, noting how each run ended (workers may end runs after Ctrl-C)."""

    def __init__(self, inner: SweepCallback) -> None:
        self.inner, self.ended = inner, {}

    def on_sweep_start(self, runs: list[RunSpec], data: Cifar10 | None, where: str) -> None:
        self.inner.on_sweep_start(runs, data, where)

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        self.inner.on_run_start(run, epochs, start_epoch)

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        self.inner.on_step(run, step, steps_per_epoch)

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        self.inner.on_epoch(run, row)

    def on_run_end(self, run: RunSpec, status: str, detail: str = "") -> None:
        self.ended[run] = status
        self.inner.on_run_end(run, status, detail)


def run_experiment(
    config: ExperimentConfig,
    *,
    overwrite: bool = False,
    fail_fast: bool = False,
    callback: SweepCallback | None = None,
    plan: Plan | None = None,
    executor: Executor | None = None,
) -> SweepReport:
    """Train every run of ``config`` (of ``plan``'s shard) that is not already complete,
    resuming interrupted ones from their last checkpoint; write results under
    ``config.output``.

    Bad input (device, data, a conflicting or unwritable output folder) raises before anything
    is trained. A failed run is recorded and the sweep goes on, unless ``fail_fast``. Ctrl-C
    raises SweepInterrupted once the runs in progress are marked interrupted. ``plan``: the
    result of ``check_experiment`` where the caller has it already; ``executor``: where the
    runs train (default: one after another in this process).
    """
    relay = _NoteEnds(callback or SweepCallback())
    started = time.perf_counter()
    plan = plan or check_experiment(config, overwrite=overwrite)
    todo = [run for run in plan.runs if run not in plan.done]
    skipped = [run for run in plan.runs if run in plan.done]
    report = SweepReport(output=Path(config.output), skipped=skipped)
    loaded: dict[str, Cifar10] = {}
    executor = executor or InProcess(plan.device, loaded)
    # loaded here too where the runs read this machine's files: bad data stops the sweep
    # before it starts, and worker processes find it decoded in the cache
    first = load_data(plan.configs[todo[0].label], loaded) if todo and executor.local else None
    _write_experiment_config(config)
    for run in report.skipped:
        relay.on_run_end(run, "skipped", "already completed with this config")
    if not todo:
        report.wall_seconds = time.perf_counter() - started
        return report
    relay.on_sweep_start(todo, first, executor.where)
    jobs = [Job(plan.configs[run.label], run, overwrite) for run in todo]
    try:  # closing: Ctrl-C between two results still winds the executor down, at once
        with contextlib.closing(executor.run(jobs, relay, fail_fast=fail_fast)) as results:
            for job, status, detail in results:
                if status == "completed":
                    report.completed.append(job.run)
                elif status == "skipped":
                    report.skipped.append(job.run)
                elif status == "busy":
                    report.busy.append(job.run)
                else:
                    report.failed.append((job.run, f"{status}: {detail}"))
    except KeyboardInterrupt:
        report.wall_seconds = time.perf_counter() - started
        ended = relay.ended.items()
        report.completed += [r for r, s in ended if s == "completed" and r not in report.completed]
        interrupted = [run for run, status in ended if status == "interrupted"]
        raise SweepInterrupted(report, interrupted) from None
    report.wall_seconds = time.perf_counter() - started
    return report


def diagnose_run(
    folder: str | Path, *, sample: int = 2000, recalibrate: bool = False
) -> dict[str, Any]:
    """Rebuild a run (finished or not) from its run.json and newest checkpoint, on the CPU,
    and measure its variance shift on ``sample`` fixed, un-augmented training images; with
    ``recalibrate``, also re-calibrate BN as the run's config says and test before and after.
    Raises DataError with the path where the folder is not a readable run."""
    folder = Path(folder)
    try:
        info = read_json(folder / RUN_FILE)
        stored = {**info["config"], "output": str(folder), "device": "cpu"}
        stored["train"] = {**stored["train"], "vshift_sample": sample}
        config = build_config(stored, source=str(folder))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{folder / RUN_FILE}: not a readable run ({err})") from None
    state, notes = _resume_point(folder, info.get("config_hash"))
    if state is None:
        detail = f" ({'; '.join(notes)})" if notes else " (keep_checkpoints)"
        raise DataError(f"{folder}: no checkpoint of this run to rebuild the model from{detail}")
    (name, spec), seed = next(iter(config.schemes.items())), config.seeds[0]
    data = load_cifar10(config.data.model_copy(update={"download": False}))
    run = RunSpec(name, tuple(spec.ops), tuple(spec.head), seed)
    trainer = new_trainer(config, run, data, torch.device("cpu"))
    try:  # the weights only: any checkpoint format has them
        trainer.model.load_state_dict(state["model"])
        trainer.epoch = int(state["epoch"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise DataError(f"{folder}: checkpoint does not fit the run's model ({err})") from None
    result: dict[str, Any] = {
        "scheme": name,
        "seed": seed,
        "epoch": trainer.epoch,
        "layers": trainer.measure_shift(),
    }
    if recalibrate and result["layers"]:
        result["test_acc"] = evaluate(trainer.model, trainer.test_loader, trainer.speed)[1]
        result["test_acc_recalibrated"] = trainer.recalibrate()["test_acc_recalibrated"]
        result["recalibration"] = config.train.recalibration
        result["layers_recalibrated"] = [r for r in trainer.shift_rows if r["recalibrated"]]
    return result
