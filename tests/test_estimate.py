"""The sweep's cost: counted before it starts, estimated from its first steps while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import invoke, tiny_config, write_folder_layout

from bnorder.runs.config import load_config
from bnorder.runs.estimate import SweepClock, duration, workload
from bnorder.runs.metrics import EpochRow
from bnorder.runs.plan import RunSpec, SweepOptions, make_plan
from bnorder.runs.records import Status
from bnorder.runs.sweep import prepare_sweep


@pytest.mark.parametrize(
    "seconds, said",
    [(42, "42 s"), (600, "10 min"), (3725, "1 h 2 min"), (7200, "2 h"), (166_000, "1 d 22 h")],
)
def test_durations_read_as_people_say_them(seconds: float, said: str) -> None:
    assert duration(seconds) == said


def test_validate_and_plan_count_the_training_before_it_starts(tmp_path: Path) -> None:
    root = write_folder_layout(tmp_path / "data")
    config = tiny_config(tmp_path, root, data={"train_subset": 60}, seeds=[0, 1])
    plan = make_plan(load_config(config))
    assert workload(plan).line() == "6 runs, 12 epochs in total, 720 training images"
    for command in ("validate", "plan"):
        result = invoke(command, config)
        assert "to train: 6 runs, 12 epochs in total, 720 training images" in result.output


def _row(epoch: int) -> EpochRow:
    return EpochRow(epoch, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0, 100.0)


def test_the_clock_counts_epochs_left_at_the_measured_pace() -> None:
    """Two runs of 3 epochs, 10 steps each: from the step rate first (1 s a step, plus the
    evaluation share), then from whole epochs, with two runs training at once."""
    now = [0.0]
    a, b = RunSpec("a", (), (), 0), RunSpec("b", (), (), 0)
    clock = SweepClock({a: 3, b: 3}, eval_share=0.5, clock=lambda: now[0])
    clock.on_run_start(a, 3)
    assert clock.remaining() is None  # nothing measured yet
    clock.on_step(a, 1, 10)
    now[0] = 4.0
    clock.on_step(a, 5, 10)  # 4 steps in 4 s
    # a: 2.5 epochs left, b: 3, at 10 steps × 1 s × 1.5
    assert clock.remaining() == pytest.approx(5.5 * 15)
    now[0] = 20.0
    clock.on_epoch(a, _row(1))
    clock.on_run_start(b, 3)
    assert clock.parallel == 2
    # (2 + 3) epochs over two runs at once, but b alone has 3 epochs of 20 s to go
    assert clock.remaining() == pytest.approx(3 * 20)
    clock.on_run_end(a, Status.COMPLETED)
    clock.on_run_end(b, Status.FAILED)  # a failed run has nothing left to train either
    assert clock.epochs == {} and clock.remaining() == 0


def test_the_first_estimate_is_within_a_factor_two_of_the_sweeps_time(tmp_path: Path) -> None:
    """A tiny sweep, estimated as the display does from its first run's first epoch: the
    elapsed time then, plus the estimate, against the wall time the sweep took."""
    root = write_folder_layout(tmp_path / "data", train_per_class=20)
    config = load_config(tiny_config(tmp_path, root, train={"epochs": 3, "batch_size": 16}))
    predicted: list[float] = []
    started = time.monotonic()

    class Watch(SweepClock):
        def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
            super().on_epoch(run, row)
            left = self.remaining()
            if not predicted and left is not None:
                predicted.append(time.monotonic() - started + left)

    with prepare_sweep(config, SweepOptions()) as sweep:
        planned = SweepClock.of(sweep.plan)
        report = sweep.run(Watch(planned.epochs, planned.sample))
    assert len(report.completed) == 3
    assert 0.5 <= predicted[0] / report.wall_seconds <= 2, (predicted, report.wall_seconds)
