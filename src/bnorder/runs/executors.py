"""Where a sweep's runs train: what every executor is (``Executor``) and yields
(``RunResult``), and the simplest, this process (``InProcess``). Local worker processes
(``--workers``) are in workers.py, Ray tasks (``--executor ray``) in cluster.py; the sweep
chooses one (``sweep.make_executor``). Every executor ends in ``runloop.train_job``, so a run's
files are the same wherever it trained; runs from many places merge by being in one folder,
kept apart by their locks and identities. Progress reaches the sweep as the events of
events.py, whichever process emitted them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from bnorder.data.sources import locate_data
from bnorder.runs.events import Listener, RunEnded
from bnorder.runs.records import Outcome, Status
from bnorder.runs.runloop import Job, ProcessCache, train_job

WIND_DOWN = 60.0  # seconds interrupted workers (or tasks) get to mark their runs, then killed


class RunResult(NamedTuple):
    """How a job ended, as an executor yields it."""

    job: Job
    status: Status
    detail: str


class Executor(Protocol):
    """Where a sweep's runs train: this process, local worker processes, a Ray cluster."""

    description: str  # in words, for the progress display
    device: torch.device  # where the runs train; its type is part of their identity
    reads_local_files: bool  # the runs read this machine's files

    def locate(self, root: str, dataset: str) -> tuple[str, Path] | None:
        """Which layout of ``dataset`` lies at ``root``, where the runs will read it."""
        ...

    def run(self, jobs: list[Job], emit: Listener, *, fail_fast: bool) -> Iterator[RunResult]:
        """Train ``jobs``, emitting their progress to ``emit`` in this process, and yield each
        one's result as it ends. With ``fail_fast``, start no run after one whose status does
        not let the sweep go on. Ctrl-C: mark the runs in progress interrupted, then raise
        KeyboardInterrupt."""
        ...


def train_here(job: Job, device: torch.device, emit: Listener, cache: ProcessCache) -> Outcome:
    """train_job where an error outside the run (its data, say) fails this run and not the
    process that trains the next: a worker's or a Ray task's."""
    try:
        return train_job(job, device, emit, cache)
    except Exception as err:
        detail = f"{err.__class__.__name__}: {err}"
        emit(RunEnded(job.run, Status.FAILED, detail))
        return Outcome(Status.FAILED, detail)


def with_threads(job: Job, threads: int) -> Job:
    """The job with ``train.threads`` set, unless its config sets it already."""
    if job.config.train.threads is not None:
        return job
    train = job.config.train.model_copy(update={"threads": threads})
    return replace(job, config=job.config.model_copy(update={"train": train}))


class InProcess:
    """One run after another in this process: the default, and ``--workers 1``."""

    reads_local_files = True

    def __init__(self, device: torch.device) -> None:
        self.device, self.description = device, str(device)
        self.cache = ProcessCache()

    def locate(self, root: str, dataset: str) -> tuple[str, Path] | None:
        return locate_data(root, dataset)

    def run(self, jobs: list[Job], emit: Listener, *, fail_fast: bool) -> Iterator[RunResult]:
        for job in jobs:
            status, detail = train_job(job, self.device, emit, self.cache)
            yield RunResult(job, status, detail)
            if fail_fast and not status.sweep_goes_on:
                return
