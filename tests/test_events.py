"""A sweep's progress as events: every kind reaches each listener, each run's in order, whether
the runs train in this process or in worker processes that send the events over a pipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import tiny_config

from bnorder.nets.schemes import CATALOGUE
from bnorder.runs.config import load_config
from bnorder.runs.events import (
    EpochDone,
    Event,
    RunEnded,
    RunStarted,
    Stepped,
    SweepStarted,
    throttled,
)
from bnorder.runs.plan import RunSpec, SweepOptions
from bnorder.runs.records import Status
from bnorder.runs.sweep import prepare_sweep

# a run's events as letters: started, steps and an epoch's end (twice: 2 epochs), ended; a
# worker sends a step at most every STEP_INTERVAL, so there an epoch may show none
ONE_RUN = {None: re.compile(r"R(S+E){2}X"), 2: re.compile(r"R(S*E){2}X")}


def letter(event: Event) -> str:
    match event:
        case RunStarted():
            return "R"
        case Stepped():
            return "S"
        case EpochDone():
            return "E"
        case RunEnded():
            return "X"
    raise AssertionError(f"not a run's event: {event}")


@pytest.mark.parametrize("workers", [None, 2])
def test_every_listener_hears_every_event_kind_each_runs_in_order(
    tmp_path: Path, pickle_root: Path, workers: int | None
) -> None:
    raw = tiny_config(tmp_path, pickle_root, schemes=["bn_relu_drop"], seeds=[0, 1])
    first: list[Event] = []
    second: list[Event] = []
    with prepare_sweep(load_config(raw), SweepOptions(workers=workers)) as sweep:
        report = sweep.run([first.append, second.append])
    assert len(report.completed) == 2
    assert first == second  # the same events, in the same order, to each listener
    start, *rest = first
    assert isinstance(start, SweepStarted) and len(start.runs) == 2
    assert ("worker processes" in start.description) == (workers is not None)
    for run in start.runs:
        mine = [event for event in rest if getattr(event, "run", None) == run]
        assert ONE_RUN[workers].fullmatch("".join(map(letter, mine))), mine
        assert [e.start_epoch for e in mine if isinstance(e, RunStarted)] == [0]
        assert [e.row.epoch for e in mine if isinstance(e, EpochDone)] == [1, 2]
        steps = [e for e in mine if isinstance(e, Stepped)]
        assert all(1 <= e.step <= e.steps_per_epoch for e in steps)
        assert mine[-1] == RunEnded(run, Status.COMPLETED, "")
    assert len(rest) == sum(1 for event in rest if getattr(event, "run", None) in start.runs)


def test_a_skipped_run_is_told_before_the_sweep_starts(tmp_path: Path, pickle_root: Path) -> None:
    raw = tiny_config(tmp_path, pickle_root, schemes=["bn_relu_drop"], seeds=[0, 1])
    with prepare_sweep(load_config(raw), SweepOptions()) as sweep:
        sweep.run()
    heard: list[Event] = []
    with prepare_sweep(load_config(raw), SweepOptions()) as sweep:
        sweep.run([heard.append])
    assert [type(event) for event in heard] == [RunEnded, RunEnded]  # nothing to train
    assert {event.status for event in heard} == {Status.SKIPPED}


def test_steps_are_thinned_out_and_nothing_else_is() -> None:
    now = [0.0]
    sent: list[Event] = []
    emit = throttled(sent.append, interval=1.0, clock=lambda: now[0])
    run = RunSpec("a", CATALOGUE["bn_only"], 0)
    for step in range(1, 5):  # 4 steps in 0.6 s: only the first goes out
        emit(Stepped(run, step, 10))
        now[0] += 0.2
    emit(RunEnded(run, Status.COMPLETED))
    now[0] += 1.0
    emit(Stepped(run, 6, 10))
    assert sent == [Stepped(run, 1, 10), RunEnded(run, Status.COMPLETED), Stepped(run, 6, 10)]


def test_the_display_lists_runs_found_done_up_to_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed sweep of thousands of runs does not print a line for each run it finds done
    before it starts; one found done during the sweep (by another process) is always said."""
    import io

    from rich.console import Console

    from bnorder.cli import live

    monkeypatch.setattr(live, "SKIPPED_LISTED", 3)
    console = Console(file=io.StringIO(), width=200)
    with live.progress_bars(console) as progress:
        display = live.LiveProgress(progress, 7)
        runs = [RunSpec(f"s{i}", CATALOGUE["bn_only"], 0) for i in range(7)]
        for run in runs[:5]:
            display(RunEnded(run, Status.SKIPPED, "already completed with this config"))
        display(SweepStarted(tuple(runs[5:]), None, "cpu"))
        display(RunEnded(runs[5], Status.SKIPPED, "completed in another process"))
    lines = console.file.getvalue().splitlines()
    assert sum("already completed" in line for line in lines) == 3
    assert sum("more runs already done, not listed" in line for line in lines) == 1
    assert any("completed in another process" in line for line in lines)


def test_the_display_draws_no_bar_before_a_run_and_counts_an_epochs_steps() -> None:
    """A sweep that stops on bad data before any run prints its one line with no empty
    ``sweep 0/N`` bar above it; a run's bar counts the steps of the epoch its label names,
    not the whole run's steps under an epoch label."""
    import io

    from rich.console import Console

    from bnorder.cli import live
    from bnorder.runs.metrics import EpochRow

    console = Console(file=io.StringIO(), width=200)
    run = RunSpec("a", CATALOGUE["bn_only"], 0)
    with live.progress_bars(console) as progress:
        display = live.LiveProgress(progress, 1)
        assert progress.tasks == []  # nothing drawn yet
        display(SweepStarted((run,), None, "cpu"))
        display(RunStarted(run, epochs=3))
        display(Stepped(run, 13, 195))
        bar = progress.tasks[-1]
        assert (bar.completed, bar.total) == (13, 195)
        row = EpochRow(epoch=1, train_loss=2.0, train_acc=0.2, test_loss=2.1, test_acc=0.25,
                       lr=0.1, epoch_seconds=1.0, images_per_second=100.0)  # fmt: skip
        display(EpochDone(run, row))
        assert progress.tasks[-1].description == (
            "a/seed0 epoch 2/3, after 1: loss 2.000 test acc 25.00%"
        )
    assert progress.tasks[0].description == "sweep"


def test_the_closing_line_says_how_many_runs_resumed() -> None:
    from bnorder.cli.render import report_line
    from bnorder.runs.sweep import SweepReport

    runs = [RunSpec(s, CATALOGUE["bn_only"], 0) for s in ("a", "b")]
    report = SweepReport(Path("out"), completed=runs, resumed=runs[:1])
    assert report_line(report, 2).startswith(
        "2 completed (1 resumed from a checkpoint), 0 already done, 0 failed"
    )
