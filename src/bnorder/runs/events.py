"""A sweep's progress as events, each kind defined once here: ``SweepStarted``, ``RunStarted``,
``Stepped``, ``EpochDone``, ``RunEnded``.

Whatever makes progress (the sweep, the run loop, an executor) emits events to a ``Listener``,
any ``Callable[[Event], None]``: the live display, the sweep clock, the sweep's own tally. A
worker process or a Ray task sends the very same objects to the sweep's process, which emits
them to its listeners; nothing is translated on the way. With several workers, the runs'
events interleave (each run's stay in order). A listener picks the kinds it cares about with
``match event:``; adding a kind touches its definition here and those listeners only."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bnorder.runs.metrics import EpochRow
from bnorder.runs.records import Outcome, Status

if TYPE_CHECKING:
    from bnorder.data.catalog import ImageData
    from bnorder.runs.plan import RunSpec

STEP_INTERVAL = 0.25  # seconds between step events sent on: enough for a progress bar


@dataclass(frozen=True)
class SweepStarted:
    """The sweep's runs to train are about to start."""

    runs: tuple[RunSpec, ...]
    data: ImageData | None  # the first run's data; None where read elsewhere only (Ray)
    description: str  # where the runs train (the device, workers or cluster), in words


@dataclass(frozen=True)
class RunStarted:
    run: RunSpec
    epochs: int  # the run's epochs in all
    start_epoch: int = 0  # epochs resumed from a checkpoint


@dataclass(frozen=True)
class Stepped:
    run: RunSpec
    step: int  # steps into the epoch in progress
    steps_per_epoch: int


@dataclass(frozen=True)
class EpochDone:
    run: RunSpec
    row: EpochRow  # the epoch's metrics, as written to metrics.csv


@dataclass(frozen=True)
class RunEnded:
    run: RunSpec
    status: Status
    detail: str = ""

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.status, self.detail)


Event = SweepStarted | RunStarted | Stepped | EpochDone | RunEnded
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener that hears nothing: for a caller that shows no progress."""


def fan_out(listeners: Iterable[Listener]) -> Listener:
    """One listener that hands each event to every one of ``listeners``, in their order."""
    every = tuple(listeners)

    def emit(event: Event) -> None:
        for listener in every:
            listener(event)

    return emit


def throttled(
    send: Listener, interval: float = STEP_INTERVAL, clock: Callable[[], float] = time.monotonic
) -> Listener:
    """``send``, passed a Stepped event at most every ``interval`` seconds and every other
    event at once: what crosses a pipe or reaches a Ray actor stays a trickle."""
    last = [-float("inf")]  # when a step was last sent

    def emit(event: Event) -> None:
        if isinstance(event, Stepped):
            now = clock()
            if now - last[0] < interval:
                return
            last[0] = now
        send(event)

    return emit
