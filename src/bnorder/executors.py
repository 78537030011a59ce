"""Executors past this process: local worker processes (``--workers``) and Ray tasks
(``--executor ray``). Both end in ``train_job``, as the in-process executor does, so a run's
files are the same wherever it trained; runs from many places merge by being in one folder,
kept apart by their locks and identities."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from bnorder.config import ConfigError
from bnorder.data import Cifar10, locate_cifar10
from bnorder.experiment import FINE, Job, RunSpec, SweepCallback, train_job
from bnorder.files import cache_dir
from bnorder.train import EpochRow, resolve_device

STEP_INTERVAL = 0.25  # seconds between step events a worker sends: enough for a progress bar
WIND_DOWN = 60.0  # seconds interrupted workers get to mark their runs, before they are killed


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


class Forward(SweepCallback):
    """A worker's side of the progress display: sends each event to the sweep's process,
    steps at most every STEP_INTERVAL."""

    def __init__(self, send: Callable[[tuple[str, tuple[Any, ...]]], None]) -> None:
        self.send, self.last_step = send, 0.0

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        self.send(("on_run_start", (run, epochs, start_epoch)))

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        now = time.monotonic()
        if now - self.last_step >= STEP_INTERVAL:
            self.last_step = now
            self.send(("on_step", (run, step, steps_per_epoch)))

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        self.send(("on_epoch", (run, row)))

    def on_run_end(self, run: RunSpec, status: str, detail: str = "") -> None:
        self.send(("on_run_end", (run, status, detail)))


def relay(event: tuple[str, tuple[Any, ...]], callback: SweepCallback) -> None:
    name, args = event
    getattr(callback, name)(*args)


def _train_here(
    job: Job, device: torch.device, callback: SweepCallback, loaded: dict[str, Cifar10]
) -> tuple[str, str]:
    """train_job in a worker, where an error outside the run (its data, say) fails this run
    and not the worker."""
    try:
        return train_job(job, device, callback, loaded)
    except Exception as err:
        detail = f"{err.__class__.__name__}: {err}"
        callback.on_run_end(job.run, "failed", detail)
        return "failed", detail


# ---------------------------------------------------------------- local worker processes


def local_devices(name: str, devices: list[str] | None, workers: int) -> list[torch.device]:
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
    context.set_forkserver_preload(["bnorder.executors"])
    return context


def _for_worker(job: Job, threads: int) -> Job:
    """The job with its threads set and its data cache named: a worker forked from a server
    started earlier has that server's environment, not this process's $BNORDER_CACHE now."""
    job = with_threads(job, threads)
    if job.config.data.cache_dir is not None:
        return job
    data = job.config.data.model_copy(update={"cache_dir": str(cache_dir())})
    return replace(job, config=job.config.model_copy(update={"data": data}))


@dataclass
class _Slot:
    """A worker process and its end of their pipe (one pipe each: a worker killed mid-write
    breaks only its own).

    The protocol, worker → sweep: ("ready", None) once started; ("event", (method, args)) for
    progress; ("done", (status, detail)) after each job. Sweep → worker: a Job, or None for
    "no more, exit". A closed pipe means the worker exited."""

    process: Any  # a multiprocessing Process (forkserver or spawn)
    pipe: Connection
    ready: bool = False  # it started: a worker that exits before this cannot start at all
    job: Job | None = None  # the job it trains, None while idle
    ended: tuple[str, str] | None = None  # the job's run reported its end: (status, detail)


class LocalWorkers:
    """Up to ``workers`` runs at once, each in a worker process of its own, worker k on
    ``devices[k % len(devices)]`` with ``threads`` CPU threads
    (default: this process's cores shared out)."""

    local = True

    def __init__(self, workers: int, devices: list[torch.device], threads: int | None = None):
        if workers < 1:
            raise ConfigError(f"--workers: {workers}: at least 1")
        self.workers, self.devices = workers, devices
        self.threads = threads or max(1, available_cores() // workers)
        names = ", ".join(str(device) for device in devices)
        threads = f"{self.threads} CPU thread{'s' if self.threads > 1 else ''}"
        self.where = f"{names} ({workers} worker processes, {threads} each)"

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[tuple[Job, str, str]]:
        context = _start_method()
        pending = deque(_for_worker(job, self.threads) for job in jobs)
        slots: dict[int, _Slot] = {}
        stopping, unstartable = False, None  # the exit code of a worker that could not start

        def start(slot: int) -> None:
            ours, theirs = context.Pipe()
            device = str(self.devices[slot % len(self.devices)])
            process = context.Process(
                target=_work, args=(device, theirs), name=f"bnorder-worker-{slot}"
            )
            process.start()
            theirs.close()  # the worker's end lives in the worker: its death closes the pipe
            slots[slot] = _Slot(process, ours)

        def next_job(worker: _Slot) -> None:
            job = pending.popleft() if pending and not stopping else None
            try:
                worker.pipe.send(job)  # None: no more, the worker exits
            except OSError:  # it died meanwhile: the job waits for the next worker
                if job is not None:
                    pending.appendleft(job)
                job = None
            worker.job, worker.ended = job, None

        try:
            for slot in range(min(self.workers, len(pending))):
                start(slot)
            while slots:
                for slot, kind, payload in _messages(slots):
                    worker = slots[slot]
                    if kind == "event":
                        if payload[0] == "on_run_end":
                            worker.ended = payload[1][1:]
                        relay(payload, callback)
                    elif kind == "ready":
                        worker.ready = True
                        next_job(worker)
                    elif kind == "done":
                        job, (status, detail) = worker.job, payload
                        stopping |= fail_fast and status not in FINE
                        next_job(worker)
                        yield job, status, detail
                    else:  # its pipe closed: the worker exited, or is past talking to
                        del slots[slot]
                        _end(worker.process)
                        code = worker.process.exitcode
                        if not worker.ready:  # it could not start (its device, say)
                            unstartable = code
                            continue  # not again: the other workers take the jobs
                        if worker.job is not None:  # it died training a run
                            status, detail = worker.ended or (
                                "failed",
                                f"its worker process died (exit code {code})",
                            )
                            if worker.ended is None:
                                callback.on_run_end(worker.job.run, status, detail)
                            stopping |= fail_fast and status not in FINE
                            yield worker.job, status, detail
                        if pending and not stopping:
                            start(slot)
            for job in pending if not stopping else ():  # every worker failed to start
                detail = f"no worker process could start (exit code {unstartable})"
                callback.on_run_end(job.run, "failed", detail)
                yield job, "failed", detail
        finally:
            _wind_down(slots, callback)


def _messages(slots: dict[int, _Slot], timeout: float = 0.5) -> list[tuple[int, str, Any]]:
    """The workers' messages as (slot, kind, payload), waiting up to ``timeout`` for any;
    kind "exit" where a worker's pipe closed (or can no longer be read)."""
    by_pipe = {worker.pipe: slot for slot, worker in slots.items()}
    messages = []
    for pipe in wait(list(by_pipe), timeout=timeout):
        try:
            kind, payload = pipe.recv()
        except Exception:  # closed; or cut mid-message by Ctrl-C: either way, done with it
            kind, payload = "exit", None
        messages.append((by_pipe[pipe], kind, payload))
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


def _wind_down(slots: dict[int, _Slot], callback: SweepCallback) -> None:
    """Ctrl-C, or the sweep stopped early: idle workers are let go; busy ones get SIGTERM (as
    Slurm stops a job; one that saw a terminal's Ctrl-C already ignores it), mark their runs
    interrupted and exit, or are killed after WIND_DOWN (or at a second Ctrl-C)."""
    for worker in slots.values():
        if worker.job is None or worker.ended is not None:
            with contextlib.suppress(OSError):
                worker.pipe.send(None)
        else:
            _signal(worker.process, signal.SIGTERM)
    started = time.monotonic()
    try:
        while slots and time.monotonic() - started < WIND_DOWN:
            for slot, kind, payload in _messages(slots, timeout=0.2):
                if kind == "event":
                    relay(payload, callback)
                elif kind in ("done", "ready"):  # a finished run's on_run_end told the display
                    with contextlib.suppress(OSError):
                        slots[slot].pipe.send(None)
                else:
                    _end(slots.pop(slot).process)
    finally:
        for worker in slots.values():
            _end(worker.process, timeout=0)


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
    callback = Forward(lambda event: pipe.send(("event", event)))
    loaded: dict[str, Cifar10] = {}
    try:
        here = torch.device(device)
        if here.type == "cuda":
            torch.cuda.set_device(here)  # fails here, before "ready", where it cannot work
        pipe.send(("ready", None))
        while (job := pipe.recv()) is not None:
            pipe.send(("done", _train_here(job, here, callback, loaded)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped (the run is marked interrupted), or the sweep's process is gone


# ---------------------------------------------------------------- Ray


class EventLog:
    """A Ray actor the runs' tasks send their progress to, and the driver takes it from; it
    also says whether a task may still start its run (not after --fail-fast stopped the
    sweep: a run already started finishes, as with local workers)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.stopped = False

    def put(self, event: tuple[str, tuple[Any, ...]]) -> None:
        self.events.append(event)

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
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


def _ray_task(job: Job, device_type: str, events: Any) -> tuple[str, str] | None:
    """A run as a Ray task; None where the sweep stopped before it began."""
    import ray

    if not ray.get(events.may_start.remote()):
        return None
    callback = Forward(lambda event: ray.get(events.put.remote(event)))  # in order, delivered
    return _train_here(job, torch.device(device_type), callback, {})


def _locate(root: str) -> tuple[str, Path] | None:
    return locate_cifar10(root)


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


class RayTasks:
    """Each run a Ray task asking for ``cpus`` CPUs (its torch threads) and ``gpus`` GPUs, on
    the cluster at ``address`` (None: $RAY_ADDRESS, else a Ray started in this process).

    ``device`` is the config's: ``auto`` is ``cuda`` where the cluster has GPUs, else ``cpu``.
    Connects on creation; ``close`` (or leaving a ``with`` block) disconnects."""

    local = False

    def __init__(
        self,
        *,
        device: str,
        address: str | None = None,
        cpus: int | None = None,
        gpus: float | None = None,
    ) -> None:
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
        most = {  # a run's task must fit on one node
            kind: max((node.get(kind, 0) for node in nodes), default=0) for kind in ("CPU", "GPU")
        }
        try:
            self.device = self._device(device, most["GPU"])
            self.gpus = (1.0 if self.device.type == "cuda" else 0.0) if gpus is None else gpus
            self.cpus = cpus or 1
            if self.device.type == "cuda" and self.gpus <= 0:
                raise ConfigError(f"--ray-gpus: {self.gpus} for device {device}: runs need a GPU")
            if self.device.type != "cuda" and self.gpus > 0:
                raise ConfigError(f"--ray-gpus: {self.gpus}, but device is {self.device.type}")
            if self.gpus > 1 and self.gpus != int(self.gpus):
                raise ConfigError(f"--ray-gpus: {self.gpus}: a part of one GPU, or whole GPUs")
            for kind, asked in (("CPU", self.cpus), ("GPU", self.gpus)):
                if asked > most[kind]:
                    raise ConfigError(
                        f"--ray-{kind.lower()}s: {asked:g} per run, but no node of the cluster "
                        f"has more than {most[kind]:g} {kind}s: no run could start"
                    )
        except ConfigError:
            self.close()
            raise
        per_run = f"{self.cpus} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        self.where = f"Ray at {address or os.environ.get('RAY_ADDRESS', 'a local Ray')}, "
        self.where += f"{self.device.type} ({per_run} per run)"

    @staticmethod
    def _device(name: str, cluster_gpus: float) -> torch.device:
        kind = ("cuda" if cluster_gpus else "cpu") if name == "auto" else torch.device(name).type
        if kind == "cuda" and not cluster_gpus:
            raise ConfigError(f"device: {name!r} asked for, but the Ray cluster has no GPU")
        return torch.device(kind)  # Ray picks the GPU: each task sees its own as cuda

    def locate(self, root: str) -> tuple[str, Path] | None:
        """locate_cifar10, run on the cluster: the data must be there, not necessarily here."""
        import ray

        task = ray.remote(_locate).options(num_cpus=0)
        return ray.get(task.remote(str(Path(root).expanduser().absolute())))

    def run(
        self, jobs: list[Job], callback: SweepCallback, *, fail_fast: bool
    ) -> Iterator[tuple[Job, str, str]]:
        import ray

        events = ray.remote(num_cpus=0)(EventLog).remote()
        # no retries: a crash fails the run (resumable), as with local workers
        task = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        refs = {
            task.remote(with_threads(_absolute(job), self.cpus), self.device.type, events): job
            for job in jobs
        }

        ended: dict[RunSpec, tuple[str, str]] = {}  # runs that reported their end

        def relay_events() -> None:
            for event in ray.get(events.take.remote()):
                if event[0] == "on_run_end":
                    ended[event[1][0]] = event[1][1:]
                relay(event, callback)

        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.25)
                relay_events()  # before the results: a task's events precede its return
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as err:  # its worker died, say
                        result = ended.get(job.run)  # after its run ended, or before
                        if result is None:
                            result = "failed", f"Ray: {str(err).strip().splitlines()[0]}"
                            callback.on_run_end(job.run, *result)
                    if result is None:  # not started: --fail-fast stopped the sweep
                        continue
                    status, detail = result
                    if fail_fast and status not in FINE:
                        ray.get(events.stop.remote())
                    yield job, status, detail
        finally:
            if refs:  # Ctrl-C: tasks not started end at once; running ones get a
                # KeyboardInterrupt, mark their runs interrupted, and end
                ray.get(events.stop.remote())
                for ref in refs:
                    ray.cancel(ref)
                ray.wait(list(refs), num_returns=len(refs), timeout=WIND_DOWN)
                relay_events()
            ray.kill(events)

    def close(self) -> None:
        import ray

        ray.shutdown()

    def __enter__(self) -> RayTasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
