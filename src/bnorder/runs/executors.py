"""Where a sweep's runs train: this process (``InProcess``), local worker processes
(``LocalWorkers``, ``--workers``) or Ray tasks (``RayTasks``, ``--executor ray``), chosen, with
their options checked, by ``make_executor``. Every executor ends in ``runloop.train_job``, so a
run's files are the same wherever it trained; runs from many places merge by being in one
folder, kept apart by their locks and identities."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from bnorder.core.files import cache_dir
from bnorder.data.catalog import ImageData
from bnorder.data.sources import locate_data
from bnorder.runs.config import ConfigError, ExperimentConfig
from bnorder.runs.events import Event, RunEnded, SendEvents, SweepCallback, deliver
from bnorder.runs.plan import ExecutorKind, RunSpec, SweepOptions
from bnorder.runs.records import Outcome, Status
from bnorder.runs.runloop import Job, train_job
from bnorder.runs.train import resolve_device

WIND_DOWN = 60.0  # seconds interrupted workers get to mark their runs, before they are killed


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

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[RunResult]:
        """Train ``jobs``, relaying their progress to ``callback`` in this process, and yield
        each one's result as it ends. With ``fail_fast``, start no run after one whose status
        does not let the sweep go on. Ctrl-C: mark the runs in progress interrupted, then
        raise KeyboardInterrupt."""
        ...


def _train_here(
    job: Job, device: torch.device, callback: SweepCallback, loaded: dict[str, ImageData]
) -> Outcome:
    """train_job where an error outside the run (its data, say) fails this run and not the
    process that trains the next."""
    try:
        return train_job(job, device, callback, loaded)
    except Exception as err:
        detail = f"{err.__class__.__name__}: {err}"
        callback.on_run_end(job.run, Status.FAILED, detail)
        return Outcome(Status.FAILED, detail)


class InProcess:
    """One run after another in this process: the default, and ``--workers 1``."""

    reads_local_files = True

    def __init__(self, device: torch.device, loaded: dict[str, ImageData] | None = None) -> None:
        self.device, self.description = device, str(device)
        self.loaded = {} if loaded is None else loaded

    def locate(self, root: str, dataset: str) -> tuple[str, Path] | None:
        return locate_data(root, dataset)

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[RunResult]:
        for job in jobs:
            status, detail = train_job(job, self.device, callback, self.loaded)
            yield RunResult(job, status, detail)
            if fail_fast and not status.sweep_goes_on:
                return


# ---------------------------------------------------------------- choosing one


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


def available_cores() -> int:
    """CPU cores this process may use: a Slurm or container CPU set, not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def with_threads(job: Job, threads: int) -> Job:
    """The job with ``train.threads`` set, unless its config sets it already."""
    if job.config.train.threads is not None:
        return job
    train = job.config.train.model_copy(update={"threads": threads})
    return replace(job, config=job.config.model_copy(update={"train": train}))


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


# ---------------------------------------------------------------- local worker processes


def _start_method() -> Any:
    """forkserver on Linux: a server process that has imported torch once forks each worker in
    a moment, where spawn imports it anew in each (seconds). Never fork from the sweep's own
    process: CUDA does not survive it (the server itself never touches CUDA)."""
    if sys.platform != "linux":  # macOS frameworks are unsafe after fork; Windows has none
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bnorder.runs.executors"])
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
        self, owner: LocalWorkers, jobs: list[Job], callback: SweepCallback, fail_fast: bool
    ) -> None:
        self.owner, self.callback, self.fail_fast = owner, callback, fail_fast
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
            deliver(payload, self.callback)
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
                self.callback.on_run_end(worker.job.run, *outcome)
            self.stopping |= self.fail_fast and not outcome.status.sweep_goes_on
            yield RunResult(worker.job, *outcome)
        if self.pending and not self.stopping:
            self.start(slot)

    def never_started(self) -> Iterator[RunResult]:
        """The jobs left where every worker failed to start: failed, once each."""
        for job in self.pending if not self.stopping else ():
            detail = f"no worker process could start (exit code {self.unstartable})"
            self.callback.on_run_end(job.run, Status.FAILED, detail)
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
                        deliver(payload, self.callback)
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

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[RunResult]:
        sweep = _WorkerSweep(self, jobs, callback, fail_fast)
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
    not be cut short by the signal that follows (a terminal's Ctrl-C, then the sweep's)."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise KeyboardInterrupt


def _work(device: str, pipe: Connection) -> None:
    """A worker process: trains the jobs the sweep sends it until it sends None."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored where started so
        signal.signal(signal.SIGINT, _interrupt_once)
    callback = SendEvents(lambda event: pipe.send((Say.EVENT, event)))
    loaded: dict[str, ImageData] = {}
    try:
        here = torch.device(device)
        if here.type == "cuda":
            torch.cuda.set_device(here)  # fails here, before READY, where it cannot work
        pipe.send((Say.READY, None))
        while (job := pipe.recv()) is not None:
            pipe.send((Say.DONE, _train_here(job, here, callback, loaded)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped (the run is marked interrupted), or the sweep's process is gone


# ---------------------------------------------------------------- Ray


class EventLog:
    """A Ray actor the runs' tasks send their progress to, and the driver takes it from; it
    also says whether a task may still start its run (not after --fail-fast stopped the
    sweep: a run already started finishes, as with local workers)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.stopped = False

    def put(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def may_start(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True


def _absolute(job: Job) -> Job:
    """Paths as the cluster's workers must see them: absolute (their working folder is not
    ours). The cluster reads the same shared file system."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().absolute())

    config = job.config
    data = config.data.model_copy(
        update={
            "root": absolute(config.data.root),
            "cache_dir": config.data.cache_dir and absolute(config.data.cache_dir),
        }
    )
    return replace(
        job, config=config.model_copy(update={"data": data, "output": absolute(config.output)})
    )


def _ray_task(job: Job, device_type: str, events: Any) -> Outcome | None:
    """A run as a Ray task; None where the sweep stopped before it began."""
    import ray

    if not ray.get(events.may_start.remote()):
        return None
    callback = SendEvents(lambda event: ray.get(events.put.remote(event)))  # in order, delivered
    return _train_here(job, torch.device(device_type), callback, {})


def _locate(root: str, dataset: str) -> tuple[str, Path] | None:
    return locate_data(root, dataset)


def _check_reachable(address: str | None) -> None:
    """Ray retries an unreachable host:port for minutes, silently: try it once first."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if match is None:  # none (start one here), "auto", "local": Ray's own rules
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=10).close()
    except OSError as err:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({err.strerror or err})"
        ) from None


def _connect(address: str | None) -> dict[str, float]:
    """Join (or start) the Ray cluster; the most CPUs and GPUs any one node has (a run's task
    must fit on one node). Raises ConfigError."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray: Ray is not installed here (pip install 'bnorder[ray]')"
        ) from None
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if address is None and "RAY_ADDRESS" not in os.environ:
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ConfigError(f"--ray-address {address}: cannot connect ({first})") from None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return {kind: max((n.get(kind, 0) for n in nodes), default=0) for kind in ("CPU", "GPU")}


def _ray_device(name: str, cluster_gpus: float) -> torch.device:
    """The config's device on the cluster: ``auto`` is ``cuda`` where it has GPUs."""
    kind = ("cuda" if cluster_gpus else "cpu") if name == "auto" else torch.device(name).type
    if kind == "cuda" and not cluster_gpus:
        raise ConfigError(f"device: {name!r} asked for, but the Ray cluster has no GPU")
    return torch.device(kind)  # Ray picks the GPU: each task sees its own as cuda


def _check_request(device: torch.device, cpus: int, gpus: float, most: dict[str, float]) -> None:
    """A run's CPUs and GPUs fit the device and some node. Raises ConfigError."""
    if device.type == "cuda" and gpus <= 0:
        raise ConfigError(f"--ray-gpus: {gpus} for device {device}: runs need a GPU")
    if device.type != "cuda" and gpus > 0:
        raise ConfigError(f"--ray-gpus: {gpus}, but device is {device.type}")
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"--ray-gpus: {gpus}: a part of one GPU, or whole GPUs")
    for kind, asked in (("CPU", cpus), ("GPU", gpus)):
        if asked > most[kind]:
            raise ConfigError(
                f"--ray-{kind.lower()}s: {asked:g} per run, but no node of the cluster "
                f"has more than {most[kind]:g} {kind}s: no run could start"
            )


class RayTasks:
    """Each run a Ray task asking for ``cpus`` CPUs (its torch threads) and ``gpus`` GPUs, on
    the cluster at ``address`` (None: $RAY_ADDRESS, else a Ray started in this process).

    ``device`` is the config's: ``auto`` is ``cuda`` where the cluster has GPUs, else ``cpu``.
    Connects on creation; ``close`` (or leaving a ``with`` block) disconnects."""

    reads_local_files = False

    def __init__(
        self,
        device: str,
        address: str | None = None,
        cpus: int | None = None,
        gpus: float | None = None,
    ) -> None:
        most = _connect(address)
        try:
            self.device = _ray_device(device, most["GPU"])
            self.gpus = (1.0 if self.device.type == "cuda" else 0.0) if gpus is None else gpus
            self.cpus = cpus or 1
            _check_request(self.device, self.cpus, self.gpus, most)
        except ConfigError:
            self.close()
            raise
        per_run = f"{self.cpus} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        cluster = address or os.environ.get("RAY_ADDRESS", "a local Ray")
        self.description = f"Ray at {cluster}, {self.device.type} ({per_run} per run)"

    def locate(self, root: str, dataset: str) -> tuple[str, Path] | None:
        """locate_data, run on the cluster: the data must be there, not necessarily here."""
        import ray

        task = ray.remote(_locate).options(num_cpus=0)
        return ray.get(task.remote(str(Path(root).expanduser().absolute()), dataset))

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[RunResult]:
        import ray

        events = ray.remote(num_cpus=0)(EventLog).remote()
        # no retries: a crash fails the run (resumable), as with local workers
        task = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        refs = {
            task.remote(with_threads(_absolute(job), self.cpus), self.device.type, events): job
            for job in jobs
        }
        relay = _RayRelay(events, callback)
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.25)
                relay.take()  # before the results: a task's events precede its return
                for ref in ready:
                    result = relay.result(ref, refs.pop(ref))
                    if result is None:  # not started: --fail-fast stopped the sweep
                        continue
                    if fail_fast and not result.status.sweep_goes_on:
                        ray.get(events.stop.remote())
                    yield result
        finally:
            relay.cancel(list(refs))

    def close(self) -> None:
        import ray

        ray.shutdown()

    def __enter__(self) -> RayTasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RayRelay:
    """The driver's side of one RayTasks.run: the tasks' events passed on to the display, and
    each task's result, or how it ended where its worker died."""

    def __init__(self, events: Any, callback: SweepCallback) -> None:
        self.events, self.callback = events, callback
        self.ended: dict[RunSpec, Outcome] = {}  # runs that reported their end

    def take(self) -> None:
        import ray

        for event in ray.get(self.events.take.remote()):
            if isinstance(event, RunEnded):
                self.ended[event.run] = event.outcome
            deliver(event, self.callback)

    def result(self, ref: Any, job: Job) -> RunResult | None:
        import ray

        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as err:  # its worker died, say
            outcome = self.ended.get(job.run)  # after its run ended, or before
            if outcome is None:
                outcome = Outcome(Status.FAILED, f"Ray: {str(err).strip().splitlines()[0]}")
                self.callback.on_run_end(job.run, *outcome)
        return None if outcome is None else RunResult(job, *outcome)

    def cancel(self, refs: list[Any]) -> None:
        """Ctrl-C: tasks not started end at once; running ones get a KeyboardInterrupt, mark
        their runs interrupted, and end."""
        import ray

        if refs:
            ray.get(self.events.stop.remote())
            for ref in refs:
                ray.cancel(ref)
            ray.wait(refs, num_returns=len(refs), timeout=WIND_DOWN)
            self.take()
        ray.kill(self.events)
