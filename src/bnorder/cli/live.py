"""A sweep's live progress on the terminal: a listener to its events that draws a bar for the
sweep and one for each run in progress (several with workers), prints a line as each run
ends, and shows the time the sweep has left as the sweep clock estimates it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from bnorder.cli.render import run_counts
from bnorder.core.durations import duration
from bnorder.runs.estimate import LONG_ON_CPU, SweepClock
from bnorder.runs.events import EpochDone, Event, RunEnded, RunStarted, Stepped, SweepStarted
from bnorder.runs.records import Status

if TYPE_CHECKING:
    from bnorder.runs.plan import RunSpec

STATUS_COLOURS = {Status.COMPLETED: "green", Status.SKIPPED: "dim", Status.BUSY: "yellow"}
# runs found done are listed up to this many: a resumed 5,000-run sweep would print a screen
# of them per second (the closing line counts them all; bnorder plan lists them)
SKIPPED_LISTED = 20


class LiveProgress:
    """The sweep's runs, and a bar for each run in progress. With a ``clock`` (a listener
    that hears each event before this one), the sweep's bar shows the time the whole sweep
    has left, from its first steps, and a sweep that will take long on a CPU says so once,
    with what is faster."""

    def __init__(
        self, progress: Progress, total: int, clock: SweepClock | None = None, device: str = ""
    ) -> None:
        self.progress, self.clock, self.device = progress, clock, device
        self.total, self._sweep_bar = total, None  # drawn at the first run: not before an error
        self.bars: dict[RunSpec, tuple[TaskID, int]] = {}  # run → (its bar, its epochs)
        self.failed = 0
        self.skipped, self.started = 0, False  # runs found done before the sweep started
        self.warned = False
        self.decode_bar: TaskID | None = None

    def __call__(self, event: Event) -> None:
        match event:
            case SweepStarted():
                self._sweep_started(event)
            case RunStarted():
                self._run_started(event)
            case Stepped() if event.run in self.bars:  # the steps of the epoch its label names
                bar = self.bars[event.run][0]
                self.progress.update(bar, total=event.steps_per_epoch, completed=event.step)
            case EpochDone():
                self._epoch_done(event)
            case RunEnded():
                self._run_ended(event)
        self._show_estimate()

    @property
    def sweep(self) -> TaskID:
        """The sweep's bar, added when a run first needs it: a sweep that stops on bad data
        before any run says its one line without an empty bar above it."""
        if self._sweep_bar is None:
            self._sweep_bar = self.progress.add_task("sweep", total=self.total, left=None)
        return self._sweep_bar

    def decoding(self, what: str, done: int, total: int) -> None:
        """A bar for a data set being decoded into the cache (once; later runs load it)."""
        if self.decode_bar is None:
            self.decode_bar = self.progress.add_task(f"decoding {what}", total=total)
        self.progress.update(self.decode_bar, completed=done)
        if done >= total:
            self.progress.remove_task(self.decode_bar)
            self.decode_bar = None
            self._say(f"decoded {total:,} images of {what} into the cache")

    def _say(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def _show_estimate(self) -> None:
        """The clock has heard the event already: the sweep's bar shows its estimate."""
        if self.clock is None:
            return
        left = self.clock.remaining()
        if self._sweep_bar is not None:
            self.progress.update(self._sweep_bar, left=left)
        if left is not None and not self.warned and self.device == "cpu" and left > LONG_ON_CPU:
            self.warned = True
            self._say(
                f"this sweep has about {duration(left)} left on this CPU. Faster: a subset and a "
                "narrower network (configs/cifar-cpu.yaml asks cifar.yaml's question in about "
                "1.5 h), or --workers N to train N runs at once. Ctrl-C stops; the same command "
                "resumes"
            )

    def _sweep_started(self, event: SweepStarted) -> None:
        self.started = True
        data = event.data
        source = (
            f"{data.source} ({len(data.train)} train / {len(data.test)} test images)"
            if data is not None
            else "read by the workers"
        )
        self._say(f"{run_counts(list(event.runs))} on {event.description}; data: {source}")
        self.progress.update(self.sweep)  # the sweep's bar, from its first run on

    def _run_started(self, event: RunStarted) -> None:
        run, epochs, start_epoch = event.run, event.epochs, event.start_epoch
        if start_epoch:
            self._say(f"resuming {run.name} after epoch {start_epoch}")
        bar = self.progress.add_task(f"{run.name} epoch {start_epoch + 1}/{epochs}", total=None)
        self.bars[run] = (bar, epochs)

    def _epoch_done(self, event: EpochDone) -> None:
        run, row = event.run, event.row
        if run not in self.bars:
            return
        bar, epochs = self.bars[run]
        # the bar counts the next epoch's steps: the label names it, and the last one's figures
        now = (
            f"epoch {row.epoch + 1}/{epochs}, after {row.epoch}:"
            if row.epoch < epochs
            else (f"epoch {row.epoch}/{epochs} done:")
        )
        figures = f"loss {row.train_loss:.3f} test acc {row.test_acc:.2%}"
        self.progress.update(bar, description=f"{run.name} {now} {figures}")

    def _run_ended(self, event: RunEnded) -> None:
        run, status = event.run, event.status
        if run in self.bars:
            self.progress.remove_task(self.bars.pop(run)[0])
        # the sweep's bar counts runs done, as the closing line does: an interrupted run, or
        # one another process trains, is not; a failed one is said beside the bar
        if status in (Status.COMPLETED, Status.SKIPPED):
            self.progress.advance(self.sweep)
        elif status in (Status.FAILED, Status.DIVERGED, Status.CONFLICT):
            self.failed += 1
            self.progress.update(self.sweep, description=f"sweep ({self.failed} failed)")
        if status is Status.SKIPPED and not self._listed():
            return
        colour = STATUS_COLOURS.get(status, "red")
        self.progress.console.print(
            f"[{colour}]{status}[/] {escape(f'{run.name} {event.detail}'.rstrip())}",
            highlight=False,
        )

    def _listed(self) -> bool:
        """Whether a run found done gets its line: those the sweep finds before it starts are
        listed up to SKIPPED_LISTED, then said once to be many."""
        if self.started:
            return True
        self.skipped += 1
        if self.skipped == SKIPPED_LISTED + 1:
            self._say("… more runs already done, not listed (bnorder plan lists every run)")
        return self.skipped <= SKIPPED_LISTED


class Remaining(TimeRemainingColumn):
    """Time left: the sweep clock's estimate on the sweep's bar (``left``, in seconds, from
    its first steps), rich's own from the bar's rate elsewhere."""

    def render(self, task: Task) -> Text:
        left = task.fields.get("left")
        if left is None:
            return super().render(task)
        return Text(f"~{duration(left)} left", style="progress.remaining")


def progress_bars(console: Console) -> Progress:
    """The live display's columns: description, bar, done of total, elapsed, remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        Remaining(),
        console=console,
    )
