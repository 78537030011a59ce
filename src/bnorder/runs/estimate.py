"""What a sweep costs: its training work counted before it starts, and its time left estimated
while it runs.

``workload`` counts the images a plan will train on (runs × epochs × training images), which
``validate`` and ``plan`` print. ``SweepClock`` listens to a sweep's progress and, from the first
steps on, estimates the time the whole sweep has left: the epochs still to train, times the
seconds an epoch takes (measured between a run's epochs once one has ended; before that, the
measured seconds per step plus the evaluation an epoch adds, in proportion to the images it
evaluates), divided by the runs that train at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bnorder.data.catalog import DATASETS
from bnorder.runs.config import ExperimentConfig
from bnorder.runs.events import EpochDone, Event, RunEnded, RunStarted, Stepped, SweepStarted
from bnorder.runs.metrics import EpochRow
from bnorder.runs.plan import Plan, RunSpec
from bnorder.runs.records import Status

# Past this, on a CPU, the sweep is worth a second thought before it runs for days.
LONG_ON_CPU = 3 * 3600
# An evaluation image costs about a third of a training one (a forward pass, no backward).
EVAL_COST = 1 / 3


@dataclass(frozen=True)
class Workload:
    """A plan's training work: runs, epochs and images, where known before reading the data."""

    runs: int
    epochs: int  # summed over the runs
    images: int | None  # training images over every epoch of every run; None: not known yet

    def line(self) -> str:
        """``12 runs, 72 epochs in total, 360,000 training images`` (or what is known)."""
        text = f"{self.runs:,} runs, {self.epochs:,} epochs in total"
        if self.images is not None:
            text += f", {self.images:,} training images"
        return text


def train_images(config: ExperimentConfig) -> int | None:
    """Images per epoch of a run of ``config``: its subset, or its data set's training split
    where that has a known size; None for a folder data set, known only once read."""
    return config.data.train_subset or DATASETS[config.data.dataset].train_images


def workload(plan: Plan, runs: list[RunSpec] | None = None) -> Workload:
    """The training work of ``runs`` (default: those the plan has still to do)."""
    runs = plan.todo if runs is None else runs
    epochs, images = 0, 0
    for run in runs:
        config = plan.configs[run.label]
        epochs += config.train.epochs
        per_epoch = train_images(config)
        if images is not None and per_epoch is not None:
            images += per_epoch * config.train.epochs
        else:
            images = None
    return Workload(len(runs), epochs, images)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@dataclass
class _RunClock:
    epochs: int  # the run's epochs in all
    done: int = 0  # epochs completed (resumed ones included)
    step: int = 0  # steps into the epoch in progress
    steps_per_epoch: int = 0
    seen: tuple[float, int] | None = None  # (time, steps trained) when first seen stepping
    seconds_per_step: float | None = None  # measured since
    started: float = 0.0
    epoch_started: float | None = None
    in_epochs: float = 0.0  # seconds spent in its epochs
    training: bool = True


@dataclass
class SweepClock:
    """Estimates the time a sweep has left (``remaining``): a listener to its runs' progress
    events. ``epochs``: each run's epoch count; ``eval_share``: an epoch's evaluation as a
    share of its training, before an epoch has been timed."""

    epochs: dict[RunSpec, int]
    sample: int = 0  # the images of train.vshift_sample, evaluated after every epoch
    eval_share: float = 0.25
    clock: Callable[[], float] = time.monotonic
    runs: dict[RunSpec, _RunClock] = field(default_factory=dict)
    epoch_times: list[float] = field(default_factory=list)  # seconds per whole epoch
    overheads: list[float] = field(default_factory=list)  # a run's time outside its epochs
    parallel: int = 1  # the most runs seen training at once

    @classmethod
    def of(cls, plan: Plan) -> SweepClock:
        first = plan.configs[plan.todo[0].label].train.vshift_sample if plan.todo else 0
        return cls({run: plan.configs[run.label].train.epochs for run in plan.todo}, first)

    def __call__(self, event: Event) -> None:
        match event:
            case SweepStarted(data=data) if data is not None:
                evaluated = len(data.test) + min(len(data.train), self.sample)
                self.eval_share = EVAL_COST * evaluated / max(1, len(data.train))
            case RunStarted(run=run, epochs=epochs, start_epoch=start_epoch):
                now = self.clock()
                self.runs[run] = _RunClock(epochs, start_epoch, started=now, epoch_started=now)
                self.parallel = max(self.parallel, sum(r.training for r in self.runs.values()))
            case Stepped() if event.run in self.runs:
                self._stepped(self.runs[event.run], event)
            case EpochDone() if event.run in self.runs:
                self._epoch_done(self.runs[event.run], event.row)
            case RunEnded(run=run, status=status):
                self._run_ended(run, status)

    def _stepped(self, state: _RunClock, event: Stepped) -> None:
        state.step, state.steps_per_epoch = event.step, event.steps_per_epoch
        trained, now = state.done * event.steps_per_epoch + event.step, self.clock()
        if state.seen is None:  # the first step (compiling, warm-up) is left out
            state.seen = (now, trained)
        elif trained > state.seen[1]:
            state.seconds_per_step = (now - state.seen[0]) / (trained - state.seen[1])

    def _epoch_done(self, state: _RunClock, row: EpochRow) -> None:
        now = self.clock()
        if state.epoch_started is not None:
            self.epoch_times.append(now - state.epoch_started)
            state.in_epochs += now - state.epoch_started
        state.done, state.step, state.epoch_started = row.epoch, 0, now

    def _run_ended(self, run: RunSpec, status: Status) -> None:
        state = self.runs.get(run)
        if state is not None:
            state.training = False
            if status is Status.COMPLETED:  # building, re-calibrating, writing: per run
                self.overheads.append(max(0.0, self.clock() - state.started - state.in_epochs))
        if status is not Status.INTERRUPTED:  # ended, one way or another: nothing left of it
            self.epochs.pop(run, None)

    def epoch_seconds(self) -> float | None:
        """An epoch's time: as measured once one has ended, else from the step rate."""
        if self.epoch_times:
            return _median(self.epoch_times)  # robust to a first epoch's warm-up
        timed = [s for s in self.runs.values() if s.seconds_per_step is not None]
        if not timed:
            return None
        slowest = max(timed, key=lambda s: s.seconds_per_step or 0.0)
        per_step = slowest.seconds_per_step or 0.0
        return per_step * slowest.steps_per_epoch * (1 + self.eval_share)

    def remaining(self) -> float | None:
        """Seconds the sweep has left, or None before its first steps."""
        per_epoch = self.epoch_seconds()
        if per_epoch is None:
            return None
        overhead = _median(self.overheads) if self.overheads else 0.0
        each = []
        for run, epochs in self.epochs.items():
            state = self.runs.get(run)
            done = 0.0 if state is None else state.done
            if state is not None and state.steps_per_epoch:
                done += state.step / state.steps_per_epoch
            each.append(max(0.0, epochs - done) * per_epoch + (overhead if state is None else 0))
        # runs at once share the work, but no sweep ends before its longest run does
        return max(sum(each) / self.parallel, max(each, default=0.0))
