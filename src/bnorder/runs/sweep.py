"""A sweep, end to end: its executor chosen, its plan made and checked, its runs handed to
the executor, and a report of how each ended. ``prepare_sweep`` does everything that needs no
training, so that bad input stops a sweep before anything is written; ``Sweep.run`` trains,
emitting its progress to the listeners it is given."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bnorder.data.catalog import ImageData
from bnorder.runs.claim import claim_experiment
from bnorder.runs.cluster import RayTasks
from bnorder.runs.config import ConfigError, ExperimentConfig
from bnorder.runs.events import (
    EpochDone,
    Event,
    Listener,
    RunEnded,
    RunStarted,
    SweepStarted,
    fan_out,
)
from bnorder.runs.executors import Executor, InProcess, RunResult
from bnorder.runs.plan import (
    ExecutorKind,
    Plan,
    RunSpec,
    SweepOptions,
    make_plan,
)
from bnorder.runs.records import Status
from bnorder.runs.runloop import Job, ProcessCache
from bnorder.runs.train import resolve_device
from bnorder.runs.workers import LocalWorkers, local_devices


@dataclass
class SweepReport:
    output: Path
    completed: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)  # completed before, with this config
    busy: list[RunSpec] = field(default_factory=list)  # being trained by another process
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)  # failed or diverged
    refused: int = 0  # of the failed: runs the folder refused (another config, other data)
    resumed: list[RunSpec] = field(default_factory=list)  # of the completed: from a checkpoint
    wall_seconds: float = 0.0

    def add(self, result: RunResult) -> None:
        run, status = result.job.run, result.status
        if status is Status.COMPLETED:
            self.completed.append(run)
        elif status is Status.SKIPPED:
            self.skipped.append(run)
        elif status is Status.BUSY:
            self.busy.append(run)
        else:
            self.failed.append((run, f"{status}: {result.detail}"))
            self.refused += status is Status.CONFLICT


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the sweep; ``runs`` are marked interrupted on disk, each
    with ``epochs[run]`` epochs completed and kept (0: it starts over when resumed; None: it
    was stopped while choosing its checkpoint, which all stay as they were), of the sweep's
    ``total`` runs (a shard's, where sharded)."""

    def __init__(
        self,
        report: SweepReport,
        runs: list[RunSpec],
        epochs: dict[RunSpec, int] | None = None,
        total: int = 0,
    ) -> None:
        super().__init__(f"interrupted during {', '.join(run.name for run in runs) or 'start-up'}")
        self.report, self.runs, self.total = report, runs, total
        self.epochs = {run: (epochs or {}).get(run) for run in runs}


class RunTally:
    """The sweep's own listener: how each run ended (workers may end runs after Ctrl-C, when
    the sweep reads no more results) and how many epochs each has on disk (a run interrupted
    before its first has nothing to resume from)."""

    def __init__(self) -> None:
        self.ended: dict[RunSpec, Status] = {}
        self.epochs: dict[RunSpec, int] = {}  # epochs completed, those resumed from included
        self.resumed: set[RunSpec] = set()  # runs that started from a checkpoint

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted(run=run, start_epoch=start_epoch):
                self.epochs[run] = start_epoch
                if start_epoch:
                    self.resumed.add(run)
            case EpochDone(run=run, row=row):
                self.epochs[run] = row.epoch
            case RunEnded(run=run, status=status):
                self.ended[run] = status

    def interrupted(self, report: SweepReport, total: int) -> SweepInterrupted:
        """After Ctrl-C: the runs that completed meanwhile go to the report; those marked
        interrupted go to the exception, with their epochs kept."""
        ended = self.ended.items()
        report.completed += [
            run
            for run, status in ended
            if status is Status.COMPLETED and run not in report.completed
        ]
        marked = [run for run, status in ended if status is Status.INTERRUPTED]
        return SweepInterrupted(report, marked, self.epochs, total)


@dataclass
class Sweep:
    """A sweep checked and ready: its config, plan, options and executor."""

    config: ExperimentConfig
    plan: Plan
    options: SweepOptions
    executor: Executor

    def run(self, listeners: Iterable[Listener] = ()) -> SweepReport:
        """Train every run of the plan that is not already complete, resuming interrupted ones
        from their last checkpoint; write results under ``config.output``; emit the progress
        to each of ``listeners``, in their order. A failed run is recorded and the sweep goes
        on, unless ``options.fail_fast``. Ctrl-C raises SweepInterrupted once the runs in
        progress are marked interrupted."""
        tally, started = RunTally(), time.perf_counter()
        emit = fan_out([tally, *listeners])
        todo = self.plan.todo
        skipped = [run for run in self.plan.runs if run in self.plan.done]
        report = SweepReport(Path(self.config.output), skipped=skipped)
        first = self._load_first(todo)
        claim_experiment(self.config, self.options.overwrite)  # before the first run starts
        for run in report.skipped:
            emit(RunEnded(run, Status.SKIPPED, "already completed with this config"))
        try:
            if todo:
                emit(SweepStarted(tuple(todo), first, self.executor.description))
                self._train(todo, emit, report)
        except KeyboardInterrupt:
            report.wall_seconds = time.perf_counter() - started
            raise tally.interrupted(report, len(self.plan.runs)) from None
        report.wall_seconds = time.perf_counter() - started
        report.resumed = [run for run in report.completed if run in tally.resumed]
        return report

    def _load_first(self, todo: list[RunSpec]) -> ImageData | None:
        """The first run's data, where the runs read this machine's files: bad data stops the
        sweep before it starts, and worker processes find it decoded in the cache."""
        if not todo or not self.executor.reads_local_files:
            return None
        in_process = isinstance(self.executor, InProcess)  # then its runs reuse what it loads
        cache = self.executor.cache if in_process else ProcessCache()
        return cache.data_of(self.plan.configs[todo[0].label])

    def _train(self, todo: list[RunSpec], emit: Listener, report: SweepReport) -> None:
        jobs = [Job(self.plan.configs[run.label], run, self.options.overwrite) for run in todo]
        results = self.executor.run(jobs, emit, fail_fast=self.options.fail_fast)
        # closing: Ctrl-C between two results still winds the executor down, at once
        with contextlib.closing(results):
            for result in results:
                report.add(result)


@contextlib.contextmanager
def make_executor(config: ExperimentConfig, options: SweepOptions) -> Iterator[Executor]:
    """The executor ``options`` ask for, its options checked against each other and against
    this machine (or the Ray cluster) before anything trains. Raises ConfigError."""
    if options.executor is ExecutorKind.ray:
        if options.workers is not None or options.devices:
            raise ConfigError(
                "--workers/--devices: for --executor local; Ray places each run on the "
                "cluster as --ray-cpus/--ray-gpus ask"
            )
        cpus = options.ray_cpus or config.train.threads
        with RayTasks(config.device, options.ray_address, cpus, options.ray_gpus) as cluster:
            yield cluster
        return
    if (options.ray_address, options.ray_cpus, options.ray_gpus) != (None, None, None):
        raise ConfigError("--ray-address/--ray-cpus/--ray-gpus: only with --executor ray")
    workers = options.workers or len(options.devices) or 1
    if workers == 1 and not options.devices:
        yield InProcess(resolve_device(config.device))
        return
    devices = local_devices(config.device, list(options.devices), workers)
    yield LocalWorkers(workers, devices, threads=config.train.threads)


@contextlib.contextmanager
def prepare_sweep(config: ExperimentConfig, options: SweepOptions) -> Iterator[Sweep]:
    """The sweep of ``config`` as ``options`` ask: its executor chosen and connected, its plan
    made, everything checked that needs no training. Raises ConfigError, DataError or
    ResultsConflict before anything is written; leaving the block disconnects (Ray)."""
    with make_executor(config, options) as executor:
        plan = make_plan(config, executor.device, options, locate=executor.locate)
        yield Sweep(config, plan, options, executor)


def run_experiment(
    config: ExperimentConfig,
    options: SweepOptions | None = None,
    listeners: Iterable[Listener] = (),
) -> SweepReport:
    """``prepare_sweep`` and ``Sweep.run`` in one: the library's way to run a config."""
    with prepare_sweep(config, options or SweepOptions()) as sweep:
        return sweep.run(listeners)
