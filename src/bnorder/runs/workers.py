"""Local worker processes (``--workers N``, ``--devices``): up to N runs at once, each in a
worker process of its own, which sends its run's progress events and outcome to the sweep's
process through a pipe (the protocol is tabled in ``_Worker``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from bnorder.core.files import cache_dir
from bnorder.data.sources import locate_data
from bnorder.runs.config import ConfigError
from bnorder.runs.events import Listener, RunEnded, throttled
from bnorder.runs.executors import WIND_DOWN, RunResult, train_here, with_threads
from bnorder.runs.records import Outcome, Status
from bnorder.runs.runloop import Job, ProcessCache
from bnorder.runs.train import resolve_device


def available_cores() -> int:
    """CPU cores this process may use: a Slurm or container CPU set, not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_devices(name: str, devices: list[str], workers: int) -> list[torch.device]:
    """The devices workers are dealt round robin: ``devices`` as given; else the config's
    device ``name``, or every visible GPU where that is an unnumbered ``cuda`` (or ``auto`` on
    a GPU machine) and there are several workers. Raises ConfigError."""
    if devices:
        found = [resolve_device(device) for device in devices]
        if len({device.type for device in found}) > 1:
            raise ConfigError(f"--devices: {','.join(devices)} mixes device types: use one")
        return found
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and workers > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


def _start_method() -> Any:
    """forkserver on Linux: a server process that has imported torch once forks each worker in
    a moment, where spawn imports it anew in each (seconds). Never fork from the sweep's own
    process: CUDA does not survive it (the server itself never touches CUDA)."""
    if sys.platform != "linux":  # macOS frameworks are unsafe after fork; Windows has none
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bnorder.runs.workers"])
    return context


def _for_worker(job: Job, threads: int) -> Job:
    """The job with its threads set and its data cache named: a worker forked from a server
    started earlier has that server's environment, not this process's $BNORDER_CACHE now."""
    job = with_threads(job, threads)
    if job.config.data.cache_dir is not None:
        return job
    data = job.config.data.model_copy(update={"cache_dir": str(cache_dir())})
    return replace(job, config=job.config.model_copy(update={"data": data}))


class Say(str, Enum):
    """What a worker says to the sweep, first in each message; EXITED is the sweep's own
    word for a pipe that closed."""

    READY = "ready"
    EVENT = "event"
    DONE = "done"
    EXITED = "exited"


class WorkerState(Enum):
    STARTING = "starting"  # started, not READY yet
    BUSY = "busy"  # training a job whose run has not reported its end
    ENDED = "ended"  # its run reported its end (RunEnded); the job's DONE is to follow
    IDLE = "idle"  # no job: told to exit


@dataclass
class _Worker:
    """A worker process and the sweep's end of their pipe (one pipe each: a worker killed
    mid-write breaks only its own).

    The protocol, one line per message, and what it does to the worker's state. The sweep
    answers READY and DONE at once with the next job (→ BUSY) or, where none is left or the
    sweep stops, None (→ IDLE: the worker exits).

    ==========================  ===========================================================
    worker → sweep: READY        STARTING → BUSY or IDLE: it started (its device works)
    worker → sweep: EVENT, e     progress, shown; a RunEnded moves BUSY → ENDED
    worker → sweep: DONE, o      the job's Outcome, yielded; ENDED → BUSY or IDLE
    pipe closed (EXITED)         the worker is gone. From STARTING: it cannot start, and is
                                 not started again. From BUSY: it died training (the OOM
                                 killer, say): its run fails. From ENDED: the status its run
                                 reported stands. A new worker takes the slot while jobs wait.
    Ctrl-C, or the sweep ends    BUSY workers get SIGTERM and mark their runs interrupted;
                                 all others are sent None.
    ==========================  ===========================================================
    """

    process: Any  # a multiprocessing Process (forkserver or spawn)
    pipe: Connection
    state: WorkerState = WorkerState.STARTING
    job: Job | None = None
    ended: Outcome | None = None  # what its run reported, in state ENDED

    def give(self, job: Job | None) -> bool:
        """Send a job (None: exit); False where the worker is gone already."""
        self.job, self.ended = job, None
        self.state = WorkerState.BUSY if job is not None else WorkerState.IDLE
        try:
            self.pipe.send(job)
        except OSError:
            self.job, self.state = None, WorkerState.IDLE
            return False
        return True

    def died(self) -> Outcome:
        """How its job ended, now that the worker is gone without a DONE."""
        if self.state is WorkerState.ENDED:
            return self.ended
        code = self.process.exitcode
        return Outcome(Status.FAILED, f"its worker process died (exit code {code})")


def _messages(workers: dict[int, _Worker], timeout: float = 0.5) -> list[tuple[int, Say, Any]]:
    """The workers' messages as (slot, what, payload), waiting up to ``timeout`` for any;
    EXITED where a worker's pipe closed (or can no longer be read)."""
    by_pipe = {worker.pipe: slot for slot, worker in workers.items()}
    messages = []
    for pipe in wait(list(by_pipe), timeout=timeout):
        try:
            said, payload = pipe.recv()
        except Exception:  # closed; or cut mid-message by Ctrl-C: either way, done with it
            said, payload = Say.EXITED, None
        messages.append((by_pipe[pipe], Say(said), payload))
    return messages


def _signal(process: Any, signum: int) -> None:
    """By pid, unless it is known to have exited (its pid may be another process's by now).
    Not terminate(): that trusts is_alive(), which asks the forkserver, and the forkserver
    may be gone already (SIGTERM reaches every process of a Slurm job): then the exit code
    reads 255 while the worker lives on."""
    if process.exitcode not in (None, 255):
        return
    with contextlib.suppress(ProcessLookupError, TypeError):
        os.kill(process.pid, signum)


def _end(process: Any, timeout: float = 10.0) -> None:
    """Wait for a worker whose pipe closed; kill it where it lingers."""
    process.join(timeout)
    _signal(process, signal.SIGKILL)
    process.join()


class _WorkerSweep:
    """One ``LocalWorkers.run``: its workers by slot, the jobs still waiting, and whether the
    sweep stops starting runs (--fail-fast)."""

    def __init__(
        self, owner: LocalWorkers, jobs: list[Job], emit: Listener, fail_fast: bool
    ) -> None:
        self.owner, self.emit, self.fail_fast = owner, emit, fail_fast
        self.context = _start_method()
        self.pending = deque(_for_worker(job, owner.threads) for job in jobs)
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.unstartable: int | None = None  # the exit code of a worker that could not start

    def start(self, slot: int) -> None:
        ours, theirs = self.context.Pipe()
        device = str(self.owner.devices[slot % len(self.owner.devices)])
        process = self.context.Process(
            target=_work, args=(device, theirs), name=f"bnorder-worker-{slot}"
        )
        process.start()
        theirs.close()  # the worker's end lives in the worker: its death closes the pipe
        self.workers[slot] = _Worker(process, ours)

    def next_job(self, worker: _Worker) -> None:
        job = self.pending.popleft() if self.pending and not self.stopping else None
        if not worker.give(job) and job is not None:  # it died meanwhile: the job waits
            self.pending.appendleft(job)

    def handle(self, slot: int, said: Say, payload: Any) -> Iterator[RunResult]:
        """One message from the worker in ``slot`` (see _Worker's table)."""
        worker = self.workers[slot]
        if said is Say.EVENT:
            if isinstance(payload, RunEnded):
                worker.state = WorkerState.ENDED
                worker.ended = payload.outcome
            self.emit(payload)  # the worker's event, as it emitted it
        elif said is Say.READY:
            self.next_job(worker)
        elif said is Say.DONE:
            job, outcome = worker.job, payload
            self.stopping |= self.fail_fast and not outcome.status.sweep_goes_on
            self.next_job(worker)
            yield RunResult(job, *outcome)
        else:
            yield from self.exited(slot)

    def exited(self, slot: int) -> Iterator[RunResult]:
        worker = self.workers.pop(slot)
        _end(worker.process)
        if worker.state is WorkerState.STARTING:  # it could not start (its device, say)
            self.unstartable = worker.process.exitcode
            return  # not again: the other workers take the jobs
        if worker.job is not None:  # it died training a run, or after its run ended
            outcome = worker.died()
            if worker.state is WorkerState.BUSY:  # else the display was told already
                self.emit(RunEnded(worker.job.run, *outcome))
            self.stopping |= self.fail_fast and not outcome.status.sweep_goes_on
            yield RunResult(worker.job, *outcome)
        if self.pending and not self.stopping:
            self.start(slot)

    def never_started(self) -> Iterator[RunResult]:
        """The jobs left where every worker failed to start: failed, once each."""
        for job in self.pending if not self.stopping else ():
            detail = f"no worker process could start (exit code {self.unstartable})"
            self.emit(RunEnded(job.run, Status.FAILED, detail))
            yield RunResult(job, Status.FAILED, detail)

    def wind_down(self) -> None:
        """Ctrl-C, or the sweep stopped early: idle workers are let go; busy ones get SIGTERM
        (as Slurm stops a job; one that saw a terminal's Ctrl-C already ignores it), mark their
        runs interrupted and exit, or are killed after WIND_DOWN (or at a second Ctrl-C)."""
        for worker in self.workers.values():
            if worker.state is WorkerState.BUSY:
                _signal(worker.process, signal.SIGTERM)
            else:
                worker.give(None)
        started = time.monotonic()
        try:
            while self.workers and time.monotonic() - started < WIND_DOWN:
                for slot, said, payload in _messages(self.workers, timeout=0.2):
                    if said is Say.EVENT:
                        self.emit(payload)
                    elif said is Say.EXITED:
                        _end(self.workers.pop(slot).process)
                    else:  # DONE or READY: a finished run's RunEnded told the display
                        self.workers[slot].give(None)
        finally:
            for worker in self.workers.values():
                _end(worker.process, timeout=0)


class LocalWorkers:
    """Up to ``workers`` runs at once, each in a worker process of its own, worker k on
    ``devices[k % len(devices)]`` with ``threads`` CPU threads (default: this process's cores
    shared out).

    Not the standard library's ProcessPoolExecutor: there a worker killed by the OOM killer
    breaks the whole pool (every pending run fails), and it offers no way to send SIGTERM to
    the runs in progress so that they mark themselves interrupted."""

    reads_local_files = True

    def __init__(self, workers: int, devices: list[torch.device], threads: int | None = None):
        if workers < 1:
            raise ConfigError(f"--workers: {workers}: at least 1")
        self.workers, self.devices = workers, devices
        self.device = torch.device(devices[0].type)  # a run's identity has the type only
        self.threads = threads or max(1, available_cores() // workers)
        names = ", ".join(str(device) for device in devices)
        threads_each = f"{self.threads} CPU thread{'s' if self.threads > 1 else ''}"
        self.description = f"{names} ({workers} worker processes, {threads_each} each)"

    def locate(self, root: str, dataset: str) -> tuple[str, Path] | None:
        return locate_data(root, dataset)

    def run(self, jobs: list[Job], emit: Listener, *, fail_fast: bool) -> Iterator[RunResult]:
        sweep = _WorkerSweep(self, jobs, emit, fail_fast)
        try:
            for slot in range(min(self.workers, len(sweep.pending))):
                sweep.start(slot)
            while sweep.workers:
                for slot, said, payload in _messages(sweep.workers):
                    yield from sweep.handle(slot, said, payload)
            yield from sweep.never_started()
        finally:
            sweep.wind_down()


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM in a worker: interrupt the run once; its marking as interrupted must
    not be cut short by the signal that follows (a terminal's Ctrl-C, then the sweep's). The
    later ones go to a handler that does nothing, not to SIG_IGN: one already caught but not
    yet handled would then find no handler, and Python prints "Signal 15 ignored due to race
    condition" with a traceback."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), _already_stopping)
    raise KeyboardInterrupt


def _already_stopping(signum: int, frame: object) -> None:
    """A signal after the first: the worker is stopping already."""


def _work(device: str, pipe: Connection) -> None:
    """A worker process: trains the jobs the sweep sends it until it sends None."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored where started so
        signal.signal(signal.SIGINT, _interrupt_once)
    emit = throttled(lambda event: pipe.send((Say.EVENT, event)))
    cache = ProcessCache()
    try:
        here = torch.device(device)
        if here.type == "cuda":
            torch.cuda.set_device(here)  # fails here, before READY, where it cannot work
        pipe.send((Say.READY, None))
        while (job := pipe.recv()) is not None:
            pipe.send((Say.DONE, train_here(job, here, emit, cache)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped (the run is marked interrupted), or the sweep's process is gone
