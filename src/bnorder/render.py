"""Turns a comparison or a diagnosis into what the terminal shows (rich tables, markdown,
JSON), and draws a sweep's live progress.

The only module besides cli.py that uses rich. It computes nothing: the figures come from
``compare`` and ``diagnose_run``; here they are laid out. Lines returned as ``str`` are rich
markup (user text in them is escaped), to be printed with ``highlight=False``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console, ConsoleOptions, RenderResult
from rich.constrain import Constrain
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
from rich.table import Table
from rich.text import Text

from bnorder.auditor import Audit
from bnorder.compare import Comparison, grid_columns
from bnorder.datasets import ImageData
from bnorder.diagnose import Diagnosis
from bnorder.estimate import LONG_ON_CPU, SweepClock, duration
from bnorder.events import SweepCallback
from bnorder.experiment import SweepInterrupted, SweepReport
from bnorder.plan import RunSpec
from bnorder.results import EpochRow, Status
from bnorder.schemes import CATALOGUE, TOKENS, describe


class Format(str, Enum):
    """The forms compare's output takes."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


MISSING = "—"  # a figure not measured, or not defined (a std of one run)


def _cell(value: object) -> str:
    return MISSING if isinstance(value, float) and math.isnan(value) else str(value)


def _pct(fraction: float) -> str:
    return MISSING if math.isnan(fraction) else f"{fraction * 100:.2f}"


def _signed(fraction: float) -> str:
    """A difference of fractions, in points."""
    return MISSING if math.isnan(fraction) else f"{fraction * 100:+.2f}"


def _number(value: float, spec: str) -> str:
    return MISSING if math.isnan(value) else format(value, spec)


@dataclass(frozen=True)
class _Layout:
    """The summary's optional columns: only those that say something for this comparison."""

    several: bool  # the experiment folder, where rows come from more than one
    grid: list[str]  # the grid keys some run has
    mixed: bool  # the config hash, where one experiment holds several configs
    left_out: bool  # "not done", where some run is not averaged
    eval_mode: bool  # train and gap in eval mode, where some run measured them so; else train mode
    shift: bool  # "max shift", where some run measured the variance shift
    recalibrated: bool  # "recal. test" and "gain", where some run re-calibrated BN

    @classmethod
    def of(cls, summary: pd.DataFrame) -> _Layout:
        grid = grid_columns(summary)
        # the experiment folder goes unsaid only where every row's grid values already say it
        said_by_grid = bool(grid) and bool(summary[grid].notna().all(axis=None))
        return cls(
            several=summary["experiment"].nunique() > 1 and not said_by_grid,
            grid=grid,
            mixed=summary.groupby("experiment")["config"].nunique().max() > 1,
            left_out=summary["incomplete"].sum() > 0,
            eval_mode="gap_mean" in summary,
            shift="vshift_max_gmean" in summary,
            recalibrated="test_acc_recalibrated_mean" in summary,
        )

    def headers(self) -> list[str]:
        return [
            *(["experiment"] if self.several else []),
            *self.grid,
            *(["config"] if self.mixed else []),
            "scheme",
            "runs",
            *(["not done"] if self.left_out else []),
            *("test", "± std", "95% CI", "best test"),
            *(("train", "gap") if self.eval_mode else ("train*", "gap*")),
            *(["max shift"] if self.shift else []),
            *(["recal. test", "gain"] if self.recalibrated else []),
            "s/ep",
        ]


def _row_cells(row: Any, grid: list[Any], layout: _Layout) -> list[str]:
    """One summary row (an ``itertuples`` row, whose grid values are ``grid``) as printed."""
    ci = (
        "n<2"
        if math.isnan(row.final_test_acc_ci_low)
        else f"{_pct(row.final_test_acc_ci_low)}–{_pct(row.final_test_acc_ci_high)}"
    )
    return [
        *([row.experiment] if layout.several else []),
        *(_cell(value) for value in grid),
        *([row.config] if layout.mixed else []),
        row.scheme,
        str(row.runs),
        *([str(row.incomplete)] if layout.left_out else []),
        _pct(row.final_test_acc_mean),
        _pct(row.final_test_acc_std),
        ci,
        _pct(row.best_test_acc_mean),
        *(
            (_pct(row.final_train_eval_acc_mean), _pct(row.gap_mean))
            if layout.eval_mode
            else (_pct(row.final_train_acc_mean), _pct(row.gap_train_mode_mean))
        ),
        *([_number(row.vshift_max_gmean, ".2f")] if layout.shift else []),
        *(
            [_pct(row.test_acc_recalibrated_mean), _signed(row.recalibration_gain_mean)]
            if layout.recalibrated
            else []
        ),
        _number(row.epoch_seconds_mean, ".1f"),
    ]


def summary_cells(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The summary as printed: headers and cells, accuracies in percent."""
    layout = _Layout.of(summary)
    # grid keys ("model.dropout") are no identifiers: itertuples names them by position
    fields = [f"_{summary.columns.get_loc(column) + 1}" for column in layout.grid]
    rows = [
        _row_cells(row, [getattr(row, name) for name in fields], layout)
        for row in summary.itertuples()
    ]
    return layout.headers(), rows


def _caption(headers: list[str]) -> str:
    """What each column means; the optional columns' lines only where they are shown."""
    parts = [
        "test: final test accuracy, its std and 95% CI (Student t) over seeds, none where n < 2",
        "best test: the best epoch's",
        "train: accuracy on a fixed sample of training images, in eval mode as test is",
        "gap: train − test",
    ]
    if "train*" in headers:
        parts[2] = (
            "train*: the last epoch's running accuracy in train mode (dropout, augmentation "
            "on), as these runs measured nothing in eval mode (train.vshift_sample: 0, or an "
            "older version): not comparable with test"
        )
        parts[3] = "gap*: train* − test"
    if "max shift" in headers:
        parts.append(
            "max shift: the largest BN variance shift after the last epoch, geometric mean "
            "over seeds (1 = none)"
        )
    if "gain" in headers:
        parts.append("recal. test: test accuracy after BN re-calibration, gain: its change")
    parts.append("s/ep: seconds per epoch")
    return "; ".join(parts)


# Columns that read as one: a narrow terminal moves them to the next part together.
SUMMARY_GROUPS = {
    "not done": "runs",
    **dict.fromkeys(("test", "± std", "95% CI"), "test"),
    **dict.fromkeys(("train", "gap", "train*", "gap*"), "fit"),
    **dict.fromkeys(("recal. test", "gain"), "recalibrated"),
}


def summary_table(comparison: Comparison, results: str | Path) -> FittedTable:
    """The summary as a table, titled with the folder compared, its columns explained; the
    columns that name a row (scheme, grid values…) repeat in each part a narrow terminal
    needs."""
    headers, rows = summary_cells(comparison.summary)
    return FittedTable(
        headers,
        rows,
        keys=headers.index("scheme") + 1,
        title=escape(f"{results}: accuracy (%) after the last epoch, mean over seeds, best first"),
        caption=_caption(headers),
        left=frozenset(("experiment", "config", "scheme")),
        groups=SUMMARY_GROUPS,
    )


def summary_markdown(comparison: Comparison) -> str:
    """The summary as a markdown table, without a trailing newline."""
    headers, rows = summary_cells(comparison.summary)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]
    return "\n".join(lines)


def summary_csv(comparison: Comparison) -> str:
    """The summary with every column, as summary.csv holds it."""
    return comparison.summary.to_csv(index=False)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as plain Python values at full precision (pandas' to_json rounds to 10
    digits); NaN, which JSON lacks, becomes null."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (json writes floats with repr: every digit kept); an
    infinity, which JSON lacks too, as null."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def comparison_json(comparison: Comparison) -> str:
    """Summary, pairwise tests, runs left out and problems as one JSON object."""
    payload = {
        "summary": _records(comparison.summary),
        "comparisons": _records(comparison.pairs),
        "incomplete": _records(comparison.incomplete),
        "problems": comparison.problems,
        "ranking": comparison.ranking,
    }
    return json.dumps(payload, indent=2, allow_nan=False)


def comparison_notes(comparison: Comparison) -> list[str]:
    """The lines under the table: each verdict, then each run left out of the means."""
    lines = [f"- {escape(verdict)}" for verdict in comparison.pairs.get("verdict", [])]
    lines += [f"ranking: {escape(line)}" for line in comparison.ranking]
    for run in comparison.incomplete.itertuples():
        where = Path(run.experiment) / run.scheme / f"seed{run.seed}"
        error = f" ({run.error})" if run.error else ""
        lines.append(f"[yellow]not averaged[/] {escape(f'{where}: {run.status}{error}')}")
    return lines


def comparison_problems(comparison: Comparison) -> list[str]:
    """One line per file that could not be read or experiment that mixes configs."""
    return [f"[yellow]skipped[/] {escape(line)}" for line in comparison.problems]


def shift_table(result: Diagnosis) -> FittedTable:
    """The variance shift per BN layer, and after re-calibration where it was done. Only for
    a model with BN layers (``result.layers`` not empty)."""
    after = {r["layer"]: r["shift"] for r in result.layers_recalibrated}
    headers = ["layer", "name", "running var", "real var", "shift", *(["after"] if after else [])]
    rows = [
        [
            str(row["layer"]),
            row["name"],
            f"{row['running_var']:.4g}",
            f"{row['real_var']:.4g}",
            f"{row['shift']:.3f}",
            *([f"{after[row['layer']]:.3f}"] if after else []),
        ]
        for row in result.layers
    ]
    title = (
        f"{result.scheme} seed {result.seed}, epoch {result.epoch}: variance shift per BN "
        f"layer on {result.sample} training images (1 = none)"
    )
    return FittedTable(headers, rows, keys=2, title=escape(title), left=frozenset(["name"]))


def shift_notes(result: Diagnosis) -> list[str]:
    """The lines under the shift table: the largest shift and the re-calibration's effect;
    for a model without BN, the one line that says so."""
    layers = result.layers
    if not layers:
        return [f"{result.scheme}: no BN layer, so no variance shift"]
    worst = max(layers, key=lambda r: r["shift"])
    lines = [f"largest shift {worst['shift']:.3f} at layer {worst['layer']} ({worst['name']})"]
    if result.test_acc_recalibrated is not None:
        lines.append(
            f"test accuracy {result.test_acc:.2%} → {result.test_acc_recalibrated:.2%} "
            f"after re-calibrating BN with dropout off ({result.recalibration})"
        )
    return lines


def catalogue_table() -> Table:
    """The schemes a config can use by name, their order and where each comes from."""
    table = Table(title=escape("catalogue (in a config: schemes: [bn_relu_drop, drop_head])"))
    for name in ("name", "order", "from"):
        table.add_column(name, overflow="fold")
    for name, scheme in CATALOGUE.items():
        order = describe(scheme.ops, head=scheme.head, inner=scheme.inner)
        table.add_row(name, order, scheme.source)
    return table


def tokens_line() -> str:
    """What each token of a scheme's order means."""
    return "tokens: " + "; ".join(f"{token}: {text}" for token, text in TOKENS.items())


# ---------------------------------------------------------------- tables


COLUMN_RULES = 3  # what each column adds to a table's width: a rule and a space either side


@dataclass(frozen=True)
class FittedTable:
    """A table that never cuts a figure, at any width it is printed at (a terminal, COLUMNS,
    80 columns where output is piped). Where its columns do not fit, those that do not go to
    further parts under the first, each part repeating the ``keys`` leading columns that name
    a row. Figures never wrap: a column is at least as wide as its widest cell, and as wide
    as its header where there is room (else the header wraps); only narrower than the keys
    and one column does a figure fold, its digits carried to the next line, never an
    ellipsis. Cells are plain text, never markup."""

    headers: list[str]
    rows: list[list[str]]
    keys: int = 1  # leading columns that name a row, repeated in every part
    title: str | None = None  # rich markup: on the first part
    caption: str | None = None  # plain text, under the last part
    left: frozenset[str] = frozenset()  # left-justified columns (names); the others: figures
    wrap: frozenset[str] = frozenset()  # columns of prose, which may wrap between words
    groups: dict[str, str] = field(default_factory=dict)  # header → group kept in one part

    def widths(self) -> list[int]:
        """The narrowest each column can be without breaking a cell (prose: a word)."""
        return [
            max(
                [_longest_word(name)]
                + [_longest_word(row[i]) if name in self.wrap else len(row[i]) for row in self.rows]
            )
            for i, name in enumerate(self.headers)
        ]

    def sizes(self, columns: list[int], width: int) -> list[int]:
        """One part's column widths: each as narrow as its cells allow, then, in order, as
        wide as its header and cells where room is left (a header wraps, never a figure)."""
        narrowest, sizes = self.widths(), []
        room = width - 1 - sum(narrowest[i] + COLUMN_RULES for i in columns)
        for i in columns:
            whole = max(len(self.headers[i]), *(len(row[i]) for row in self.rows))
            grow = max(0, min(room, whole - narrowest[i]))
            sizes.append(narrowest[i] + grow)
            room -= grow
        return sizes

    def parts(self, width: int) -> list[list[int]]:
        """Column indices per part: the keys, then whole groups while they fit ``width``."""
        widths, keys = self.widths(), list(range(self.keys))
        room = width - 1 - sum(widths[i] + COLUMN_RULES for i in keys)
        parts, current, left = [], [], room
        for block in self._blocks(widths, room):
            cost = sum(widths[i] + COLUMN_RULES for i in block)
            if current and cost > left:
                parts.append(keys + current)
                current, left = [], room
            current, left = current + block, left - cost
        return [*parts, keys + current]

    def _blocks(self, widths: list[int], room: int) -> list[list[int]]:
        """The columns after the keys, neighbours of one group together, unless the group
        is wider than ``room`` (a part less its keys): then each column on its own."""
        blocks: list[list[int]] = []
        for i in range(self.keys, len(self.headers)):
            group = self.groups.get(self.headers[i])
            if blocks and group is not None and self.groups.get(self.headers[i - 1]) == group:
                blocks[-1].append(i)
            else:
                blocks.append([i])
        fits = [sum(widths[i] + COLUMN_RULES for i in block) <= room for block in blocks]
        return [
            part
            for block, fit in zip(blocks, fits, strict=True)
            for part in ([block] if fit else [[i] for i in block])
        ]

    def table(self, columns: list[int], width: int, *, first: bool = True) -> Table:
        """One part as a rich table, its column widths set here: rich, left to itself,
        squeezes the widest columns, figures first, and ends cells with an ellipsis."""
        table = Table(title=self.title if first else None)
        for i, size in zip(columns, self.sizes(columns, width), strict=True):
            name = self.headers[i]
            justify = "left" if name in self.left else "right"
            table.add_column(name, justify=justify, width=size, overflow="fold")
        for row in self.rows:
            table.add_row(*(Text(row[i]) for i in columns))  # user text (grid values) as text
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, widest = options.max_width, 0
        for index, columns in enumerate(self.parts(width)):
            widest = max(widest, 1 + sum(self.sizes(columns, width)) + len(columns) * COLUMN_RULES)
            yield self.table(columns, width, first=index == 0)
        if self.caption:  # wrapped under the table, where the console's soft wrap would not
            yield Constrain(Text(self.caption, overflow="fold", no_wrap=False), widest)


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.split()), default=0)


# ---------------------------------------------------------------- live progress


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


STATUS_COLOURS = {Status.COMPLETED: "green", Status.SKIPPED: "dim", Status.BUSY: "yellow"}


class LiveProgress(SweepCallback):
    """The sweep's runs, and a bar for each run in progress (several with workers). With a
    ``clock``, the sweep's bar shows the time the whole sweep has left, from its first steps,
    and a sweep that will take long on a CPU says so once, with what is faster."""

    def __init__(
        self, progress: Progress, total: int, clock: SweepClock | None = None, device: str = ""
    ) -> None:
        self.progress, self.clock, self.device = progress, clock, device
        self.sweep = progress.add_task("sweep", total=total, left=None)
        self.bars: dict[RunSpec, tuple[TaskID, int, int]] = {}  # run → (bar, epochs, done)
        self.failed = 0
        self.warned = False
        self.decode_bar: TaskID | None = None

    def decoding(self, what: str, done: int, total: int) -> None:
        """A bar for a data set being decoded into the cache (once; later runs load it)."""
        if self.decode_bar is None:
            self.decode_bar = self.progress.add_task(f"decoding {what}", total=total)
        self.progress.update(self.decode_bar, completed=done)
        if done >= total:
            self.progress.remove_task(self.decode_bar)
            self.decode_bar = None
            self.progress.console.print(
                f"decoded {total:,} images of {what} into the cache", markup=False, highlight=False
            )

    def _tell(self, hook: str, *args: Any) -> None:
        """The clock hears every event first; then the sweep's bar shows its estimate."""
        if self.clock is None:
            return
        getattr(self.clock, hook)(*args)
        left = self.clock.remaining()
        self.progress.update(self.sweep, left=left)
        if left is not None and not self.warned and self.device == "cpu" and left > LONG_ON_CPU:
            self.warned = True
            self.progress.console.print(
                f"this sweep has about {duration(left)} left on this CPU. Faster: a subset and a "
                "narrower network (configs/cifar-cpu.yaml asks cifar.yaml's question in about "
                "1.5 h), or --workers N to train N runs at once. Ctrl-C stops; the same command "
                "resumes",
                markup=False,
                highlight=False,
            )

    def on_sweep_start(self, runs: list[RunSpec], data: ImageData | None, description: str) -> None:
        source = (
            f"{data.source} ({len(data.train)} train / {len(data.test)} test images)"
            if data is not None
            else "read by the workers"
        )
        counts = [
            _count(len({r.scheme for r in runs}), "scheme"),
            _count(len({r.seed for r in runs}), "seed"),
        ]
        if any(r.label for r in runs):
            counts.append(_count(len({r.label for r in runs}), "grid point"))
        self.progress.console.print(
            f"{_count(len(runs), 'run')} ({' × '.join(counts)}) on {description}; data: {source}",
            markup=False,
            highlight=False,
        )
        self._tell("on_sweep_start", runs, data, description)

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        if start_epoch:
            self.progress.console.print(
                f"resuming {run.name} after epoch {start_epoch}", markup=False, highlight=False
            )
        bar = self.progress.add_task(f"{run.name} epoch {start_epoch + 1}/{epochs}", total=None)
        self.bars[run] = (bar, epochs, start_epoch)
        self._tell("on_run_start", run, epochs, start_epoch)

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        if run in self.bars:
            bar, epochs, done = self.bars[run]
            self.progress.update(
                bar, total=epochs * steps_per_epoch, completed=done * steps_per_epoch + step
            )
        self._tell("on_step", run, step, steps_per_epoch)

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        if run in self.bars:
            bar, epochs, _ = self.bars[run]
            self.bars[run] = (bar, epochs, row.epoch)
            self.progress.update(
                bar,
                description=(
                    f"{run.name} epoch {row.epoch}/{epochs} "
                    f"loss {row.train_loss:.3f} test acc {row.test_acc:.2%}"
                ),
            )
        self._tell("on_epoch", run, row)

    def on_run_end(self, run: RunSpec, status: Status, detail: str = "") -> None:
        if run in self.bars:
            self.progress.remove_task(self.bars.pop(run)[0])
        # the sweep's bar counts runs done, as the closing line does: an interrupted run, or
        # one another process trains, is not; a failed one is said beside the bar
        if status in (Status.COMPLETED, Status.SKIPPED):
            self.progress.advance(self.sweep)
        elif status in (Status.FAILED, Status.DIVERGED, Status.CONFLICT):
            self.failed += 1
            self.progress.update(self.sweep, description=f"sweep ({self.failed} failed)")
        self._tell("on_run_end", run, status, detail)
        colour = STATUS_COLOURS.get(status, "red")
        self.progress.console.print(
            f"[{colour}]{status}[/] {escape(f'{run.name} {detail}'.rstrip())}", highlight=False
        )


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


def report_line(report: SweepReport, total: int) -> str:
    """How a finished sweep's ``total`` runs ended, in one line (plain text)."""
    parts = [f"{len(report.completed)} completed", f"{len(report.skipped)} already done"]
    if report.busy:
        parts.append(f"{len(report.busy)} being trained by another process")
    parts.append(f"{len(report.failed)} failed")
    not_started = total - len(report.completed) - len(report.skipped) - len(report.busy)
    not_started -= len(report.failed)
    if not_started:
        parts.append(f"{not_started} not started (--fail-fast)")
    line = f"{', '.join(parts)} in {report.wall_seconds:.1f} s; results in {report.output}"
    return line if report.failed else f"{line}\nnext: bnorder compare {report.output}"


def failure_lines(report: SweepReport) -> list[str]:
    """One line (rich markup) per run that failed or diverged, with why."""
    return [f"[red]{escape(run.name)}[/]: {escape(reason)}" for run, reason in report.failed]


def interrupted_message(stop: SweepInterrupted, total: int) -> str:
    """What Ctrl-C left: each run marked interrupted and what of it is kept, and how many of
    ``total`` runs are done."""
    done = len(stop.report.completed) + len(stop.report.skipped)
    marked = [
        f"{run.name} marked interrupted after epoch {stop.epochs[run]}, which is kept"
        if stop.epochs[run]
        else f"{run.name} interrupted before its first epoch: nothing kept, it starts over"
        for run in stop.runs
    ]
    return (
        f"interrupted: {'; '.join(marked) or 'no run was in progress'}; "
        f"{done} of {total} runs are done. Rerun the same command to resume."
    )


# ---------------------------------------------------------------- audit


def audit_cells(result: Audit) -> tuple[list[str], list[list[str]]]:
    """Every BN layer as printed: the noise that feeds it (kind, rate, operations away) and
    its shift, before and after re-calibration, where measured."""
    measured = any(layer.shift is not None for layer in result.layers)
    recalibrated = any(layer.shift_recalibrated is not None for layer in result.layers)
    headers = ["BN layer", "fed by", "rate", "hops"]
    headers += (["shift"] if measured else []) + (["recalibrated"] if recalibrated else [])
    rows = []
    for layer in result.layers:
        feeds = layer.fed_by
        cells = [
            layer.name,
            ", ".join(f"{f.name} ({f.kind})" for f in feeds) or "—",
            ", ".join(MISSING if f.rate is None else f"{f.rate:g}" for f in feeds) or "—",
            ", ".join(str(f.hops) for f in feeds) or "—",
        ]
        for shown, value in ((measured, layer.shift), (recalibrated, layer.shift_recalibrated)):
            if shown:
                cells.append(_number(math.nan if value is None else value, ".3f"))
        rows.append(cells)
    return headers, rows


def audit_table(result: Audit) -> FittedTable:
    headers, rows = audit_cells(result)
    return FittedTable(
        headers,
        rows,
        title=escape(f"BN layers and the noise that feeds them ({result.method})"),
        left=frozenset(["BN layer", "fed by"]),
        wrap=frozenset(["fed by", "rate", "hops"]),  # lists, which may break between items
    )


def audit_markdown(result: Audit) -> str:
    headers, rows = audit_cells(result)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def audit_lines(result: Audit) -> list[str]:
    """The summary, what was measured on, and advice drawn from the findings (plain text)."""
    lines = [result.summary()]
    if result.measured_on:
        lines.append(f"measured on {result.measured_on}")
    if result.accuracy is not None:
        after = result.accuracy_recalibrated
        lines.append(
            f"test accuracy {result.accuracy:.2%}"
            + (
                f" → {after:.2%} after re-calibrating BN with noise off"
                if after is not None
                else ""
            )
        )
    exposed = result.exposed
    if not exposed:
        lines.append(
            "advice: no BN layer receives noise, so dropout causes no variance shift here"
            + ("; the noise after the last BN is safe for BN" if result.noise_after_last_bn else "")
        )
        return lines
    worst = max(exposed, key=lambda layer: layer.shift or 0.0)
    shift = f" (largest shift {worst.shift:.3f} at {worst.name})" if worst.shift else ""
    lines.append(
        f"advice: {len(exposed)} BN layers see a training-time variance they will not see in "
        f"eval mode{shift}. Either re-estimate BN with noise off after training "
        "(bnorder.recalibrate_bn)"
        + (
            f", which brings that layer to {worst.shift_recalibrated:.3f} here"
            if worst.shift_recalibrated is not None
            else ""
        )
        + ", or move the noise after the last BN layer (or drop it)"
    )
    return lines


def audit_json(result: Audit) -> str:
    """The findings as JSON; an infinite shift (a dead channel) as null, which JSON has."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return _plain(value)

    return json.dumps(plain(asdict(result)) | {"summary": result.summary()}, indent=2)
