"""A sweep's progress: the hooks a display implements (``SweepCallback``), and the same events
as records (``RunStarted``, ``Stepped``, ``EpochDone``, ``RunEnded``) that cross from a worker
process or a Ray task to the sweep's process, where ``deliver`` hands each to the display."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bnorder.runs.metrics import EpochRow
from bnorder.runs.records import Outcome, Status

if TYPE_CHECKING:
    from bnorder.data.catalog import ImageData
    from bnorder.runs.plan import RunSpec

STEP_INTERVAL = 0.25  # seconds between step events sent on: enough for a progress bar


class SweepCallback:
    """Progress hooks; the CLI overrides them to draw a live display. All default to no-ops.
    With several workers, the runs' events interleave (each run's stay in order)."""

    def on_sweep_start(self, runs: list[RunSpec], data: ImageData | None, description: str) -> None:
        """``data``: None where it is loaded elsewhere only (a Ray cluster); ``description``:
        where the runs train (the device, workers or cluster), in words."""

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        pass

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        pass

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        pass

    def on_run_end(self, run: RunSpec, status: Status, detail: str = "") -> None:
        pass


@dataclass(frozen=True)
class RunStarted:
    run: RunSpec
    epochs: int
    start_epoch: int


@dataclass(frozen=True)
class EpochDone:
    run: RunSpec
    row: EpochRow


@dataclass(frozen=True)
class RunEnded:
    run: RunSpec
    status: Status
    detail: str

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.status, self.detail)


@dataclass(frozen=True)
class Stepped:
    run: RunSpec
    step: int
    steps_per_epoch: int


Event = RunStarted | Stepped | EpochDone | RunEnded


def deliver(event: Event, callback: SweepCallback) -> None:
    """Hand an event that crossed from another process to the display's hook."""
    match event:
        case RunStarted(run, epochs, start_epoch):
            callback.on_run_start(run, epochs, start_epoch)
        case Stepped(run, step, steps_per_epoch):
            callback.on_step(run, step, steps_per_epoch)
        case EpochDone(run, row):
            callback.on_epoch(run, row)
        case RunEnded(run, status, detail):
            callback.on_run_end(run, status, detail)


class SendEvents(SweepCallback):
    """The far side of a display: turns each hook into an event and sends it (through a pipe
    or to a Ray actor); steps at most every STEP_INTERVAL."""

    def __init__(self, send: Callable[[Event], None]) -> None:
        self.send, self.last_step = send, 0.0

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        self.send(RunStarted(run, epochs, start_epoch))

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        now = time.monotonic()
        if now - self.last_step >= STEP_INTERVAL:
            self.last_step = now
            self.send(Stepped(run, step, steps_per_epoch))

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        self.send(EpochDone(run, row))

    def on_run_end(self, run: RunSpec, status: Status, detail: str = "") -> None:
        self.send(RunEnded(run, status, detail))


class NoteEnds:
    """A display's stand-in that passes every hook on, noting how each run ended (workers may
    end runs after Ctrl-C, when the sweep reads no more results) and how many epochs each
    has on disk (a run interrupted before its first has nothing to resume from)."""

    def __init__(self, inner: SweepCallback) -> None:
        self.inner = inner
        self.ended: dict[RunSpec, Status] = {}
        self.epochs: dict[RunSpec, int] = {}  # epochs completed, those resumed from included

    def __getattr__(self, hook: str) -> Any:  # every other hook, as the display has it
        return getattr(self.inner, hook)

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        self.epochs[run] = start_epoch
        self.inner.on_run_start(run, epochs, start_epoch)

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        self.epochs[run] = row.epoch
        self.inner.on_epoch(run, row)

    def on_run_end(self, run: RunSpec, status: Status, detail: str = "") -> None:
        self.ended[run] = status
        self.inner.on_run_end(run, status, detail)
