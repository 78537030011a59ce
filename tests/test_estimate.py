"""The sweep's cost: counted before it starts, estimated from its first steps while it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import invoke, tiny_config, write_folder_layout

from bnorder.core.durations import duration
from bnorder.nets.schemes import Scheme
from bnorder.runs.config import load_config
from bnorder.runs.estimate import SweepClock, workload
from bnorder.runs.events import EpochDone, RunEnded, RunStarted, Stepped
from bnorder.runs.metrics import EpochRow
from bnorder.runs.plan import RunSpec, make_plan
from bnorder.runs.records import Status


@pytest.mark.parametrize(
    "seconds, said",
    [(42, "42 s"), (600, "10 min"), (3725, "1 h 2 min"), (7200, "2 h"), (166_000, "1 d 22 h")],
)
def test_durations_read_as_people_say_them(seconds: float, said: str) -> None:
    """The one formatter: the estimate, the live display and the report's wall time."""
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
    a, b = RunSpec("a", Scheme(()), 0), RunSpec("b", Scheme(()), 0)
    clock = SweepClock({a: 3, b: 3}, eval_share=0.5, clock=lambda: now[0])
    clock(RunStarted(a, 3))
    assert clock.remaining() is None  # nothing measured yet
    clock(Stepped(a, 1, 10))
    now[0] = 4.0
    clock(Stepped(a, 5, 10))  # 4 steps in 4 s
    # a: 2.5 epochs left, b: 3, at 10 steps × 1 s × 1.5
    assert clock.remaining() == pytest.approx(5.5 * 15)
    now[0] = 20.0
    clock(EpochDone(a, _row(1)))
    clock(RunStarted(b, 3))
    assert clock.parallel == 2
    # (2 + 3) epochs over two runs at once, but b alone has 3 epochs of 20 s to go
    assert clock.remaining() == pytest.approx(3 * 20)
    clock(RunEnded(a, Status.COMPLETED))
    clock(RunEnded(b, Status.FAILED))  # a failed run has nothing left to train either
    assert clock.epochs == {} and clock.remaining() == 0
