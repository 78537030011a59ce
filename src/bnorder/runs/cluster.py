"""Ray tasks (``--executor ray``): each run a task on a Ray cluster, which sends its progress
events to an actor (``EventLog``) that the sweep's process reads and emits to its listeners."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bnorder.data.sources import locate_data
from bnorder.runs.config import ConfigError
from bnorder.runs.events import Event, Listener, RunEnded, throttled
from bnorder.runs.executors import WIND_DOWN, RunResult, train_here, with_threads
from bnorder.runs.plan import RunSpec
from bnorder.runs.records import Outcome, Status
from bnorder.runs.runloop import Job, ProcessCache


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
    emit = throttled(lambda event: ray.get(events.put.remote(event)))  # in order, delivered
    return train_here(job, torch.device(device_type), emit, ProcessCache())


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

    def run(self, jobs: list[Job], emit: Listener, *, fail_fast: bool) -> Iterator[RunResult]:
        import ray

        events = ray.remote(num_cpus=0)(EventLog).remote()
        # no retries: a crash fails the run (resumable), as with local workers
        task = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
        refs = {
            task.remote(with_threads(_absolute(job), self.cpus), self.device.type, events): job
            for job in jobs
        }
        relay = _RayRelay(events, emit)
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
    """The driver's side of one RayTasks.run: the tasks' events emitted here, as they were
    there, and each task's result, or how it ended where its worker died."""

    def __init__(self, events: Any, emit: Listener) -> None:
        self.events, self.emit = events, emit
        self.ended: dict[RunSpec, Outcome] = {}  # runs that reported their end

    def take(self) -> None:
        import ray

        for event in ray.get(self.events.take.remote()):
            if isinstance(event, RunEnded):
                self.ended[event.run] = event.outcome
            self.emit(event)

    def result(self, ref: Any, job: Job) -> RunResult | None:
        import ray

        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as err:  # its worker died, say
            outcome = self.ended.get(job.run)  # after its run ended, or before
            if outcome is None:
                outcome = Outcome(Status.FAILED, f"Ray: {str(err).strip().splitlines()[0]}")
                self.emit(RunEnded(job.run, *outcome))
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
