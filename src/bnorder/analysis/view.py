"""compare's results as the terminal and reports show them: the summary (both accuracies side
by side), the verdict table (scheme × grid point, for both accuracies), the lines on the
regime and the test family, markdown, CSV and JSON.

It computes nothing: the figures come from ``compare``; here they are laid out. Lines returned
as ``str`` are rich markup (user text in them is escaped), to be printed with
``highlight=False``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape

from bnorder.analysis.cells import (
    MISSING,
    cell,
    csv_text,
    in_unit,
    interval,
    json_value,
    number,
    points_interval,
)
from bnorder.analysis.compare import Comparison, centre, regime_line
from bnorder.analysis.verdicts import METRICS, POWER, margin_words
from bnorder.core.tables import FittedTable
from bnorder.runs.metrics import METRIC_TABLE, Figure, Section, grid_columns

RECALIBRATED = "test_acc_recalibrated"
# the accuracies' names in a table header, where the words of METRICS do not fit
SHORT = {"final_test_acc": "trained", RECALIBRATED: "re-est."}
SECTIONS = list(Section)  # the summary's figure columns come in this order


@dataclass(frozen=True)
class SummaryColumn:
    """One column of the summary table: its header, its cell of a summary row (a dict), what
    it means (its caption's part), its section (None for the columns that label a row) and
    the group a narrow terminal keeps in one part."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    caption: str = ""
    section: Section | None = None
    group: str | None = None


def _has_values(summary: pd.DataFrame, column: str) -> bool:
    return column in summary and bool(summary[column].notna().any())


def _label_columns(summary: pd.DataFrame) -> list[SummaryColumn]:
    """The columns that name a row, up to scheme, then its run counts: each optional one only
    where it says something for this comparison."""
    grid = grid_columns(summary)
    # the experiment folder goes unsaid only where every row's grid values already say it
    said_by_grid = bool(grid) and bool(summary[grid].notna().all(axis=None))
    several = summary["experiment"].nunique() > 1 and not said_by_grid
    mixed = summary.groupby("experiment")["config"].nunique().max() > 1
    return [
        *([SummaryColumn("experiment", lambda row: row["experiment"])] if several else []),
        *(SummaryColumn(key, lambda row, key=key: cell(row[key])) for key in grid),
        *([SummaryColumn("config", lambda row: row["config"])] if mixed else []),
        SummaryColumn("scheme", lambda row: row["scheme"]),
        SummaryColumn("runs", lambda row: str(row["runs"])),
        *(
            [SummaryColumn("not done", lambda row: str(row["incomplete"]), group="runs")]
            if summary["incomplete"].sum() > 0
            else []
        ),
    ]


def _shown_figures(summary: pd.DataFrame) -> list[Figure]:
    """The metric table's figures the summary table shows, by section: those some row has a
    value of, and each stand-in only where the column it stands in for is not shown."""
    measured = [f for f in METRIC_TABLE.figures if f.shown and _has_values(summary, centre(f))]
    shown = {f.shown.header for f in measured if f.shown.instead_of is None}
    kept = [f for f in measured if f.shown.instead_of not in shown]
    return sorted(kept, key=lambda f: SECTIONS.index(f.shown.section))


def _figure_columns(figure: Figure, recalibrated: str) -> list[SummaryColumn]:
    """A figure's mean over seeds in its unit, and its 95% CI where the table shows one."""
    shown, unit, name = figure.shown, METRIC_TABLE.unit(figure), figure.name
    group = shown.group or (name if shown.ci else None)
    caption = f"{shown.header}: {shown.caption.format(recalibrated=recalibrated)}"

    def mean(row: dict[str, Any]) -> str:
        return in_unit(row[centre(figure)], unit)

    def ci(row: dict[str, Any]) -> str:
        return interval(row[f"{name}_ci_low"], row[f"{name}_ci_high"], unit)

    columns = [SummaryColumn(shown.header, mean, caption, shown.section, group)]
    if shown.ci:
        columns.append(SummaryColumn(shown.ci, ci, section=shown.section, group=group))
    return columns


def summary_columns(summary: pd.DataFrame) -> list[SummaryColumn]:
    """The summary table's columns: those that label a row, then the figures'."""
    recalibrated = recalibrated_words(summary)
    figures = [c for f in _shown_figures(summary) for c in _figure_columns(f, recalibrated)]
    return _label_columns(summary) + figures


def summary_cells(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The summary as printed: headers and cells, accuracies in percent."""
    columns = summary_columns(summary)
    rows = [[c.cell(row) for c in columns] for row in summary.to_dict("records")]
    return [c.header for c in columns], rows


def recalibrated_words(frame: pd.DataFrame) -> str:
    """How BN was re-estimated for the runs of ``frame`` (a summary or runs table)."""
    images = set(frame.get("diagnostics_images", pd.Series(dtype=object)).dropna())
    source = "training images augmented as in training"
    if images == {"plain"}:
        source = "un-augmented training images (as earlier versions did)"
    elif "plain" in images:
        source = "training images, augmented for some runs and not for others"
    return f"BN's statistics re-estimated with dropout off, from {source}"


def summary_caption(summary: pd.DataFrame) -> str:
    """What each column shown means, then which schemes' runs grid points share."""
    parts = [c.caption for c in summary_columns(summary) if c.caption]
    shared = summary.get("shared_over", pd.Series(dtype=object)).fillna("")
    for scheme, keys in dict(zip(summary["scheme"], shared, strict=True)).items():
        if keys:
            parts.append(f"{scheme} reads no {keys}: its runs trained once, shown at each value")
    return "; ".join(parts)


def summary_table(comparison: Comparison, results: str | Path) -> FittedTable:
    """The summary as a table, titled with the folder compared, its columns explained; the
    columns that name a row (scheme, grid values…) repeat in each part a narrow terminal
    needs."""
    headers, rows = summary_cells(comparison.summary)
    groups = {c.header: c.group for c in summary_columns(comparison.summary) if c.group}
    return FittedTable(
        headers,
        rows,
        keys=headers.index("scheme") + 1,
        title=escape(f"{results}: accuracy (%) after the last epoch, mean over seeds, best first"),
        caption=summary_caption(comparison.summary),
        left=frozenset(("experiment", "config", "scheme")),
        groups=groups,
    )


# ---------------------------------------------------------------- verdicts


def verdict_cells(pairs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One row per comparison (grid point, scheme, baseline), and for each accuracy compared:
    the difference in points, its 95% CI, the outcome and the detectable difference."""
    if pairs.empty:
        return [], []
    grid = grid_columns(pairs)
    metrics = [m for m in METRICS if m in set(pairs["metric"])]
    key = ["experiment", "config", *grid, "scheme", "baseline"]
    headers = [*grid, "scheme", "vs"]
    for metric in metrics:
        short = SHORT[metric]
        headers += [f"Δ {short}", f"CI {short}", short, f"res. {short}"]
    rows = []
    for _, group in pairs.groupby(key, sort=False, dropna=False):
        first = group.iloc[0]
        cells = [*(cell(first[c]) for c in grid), first["scheme"], first["baseline"]]
        for metric in metrics:
            found = group[group["metric"] == metric]
            cells += _metric_cells(found.iloc[0]) if len(found) else [MISSING] * 4
        rows.append(cells)
    return headers, rows


def _metric_cells(row: pd.Series) -> list[str]:
    return [
        number(row["diff_points"], "+.2f"),
        points_interval(row.get("diff_ci_low", math.nan), row.get("diff_ci_high", math.nan)),
        str(row["outcome"]),
        number(row.get("detectable_points", math.nan), ".1f"),
    ]


def verdict_caption(comparison: Comparison) -> str:
    parts = [
        "Δ: the scheme's accuracy minus the baseline's, in points; CI: its 95% confidence "
        "interval (paired over seeds where they pair up)",
        f"trained: the verdict on the accuracy {METRICS['final_test_acc']}",
    ]
    if RECALIBRATED in set(comparison.pairs["metric"]):
        parts.append(f"re-est.: on the accuracy with {recalibrated_words(comparison.runs)}")
    parts += [
        "better / worse: a difference significant after Holm's correction; equivalent: inside "
        "the ±margin by two one-sided tests (only this says 'no cost'); inconclusive: neither; "
        "degenerate: a side with every run at one value, untestable",
        f"res.: the smallest difference this design detects at {POWER:.0%} power, at the "
        "family's α/N",
    ]
    return "; ".join(parts)


def verdict_table(comparison: Comparison) -> FittedTable | None:
    headers, rows = verdict_cells(comparison.pairs)
    if not rows:
        return None
    return FittedTable(
        headers,
        rows,
        keys=headers.index("vs") + 1,
        title="verdicts: each scheme against its baseline, on each accuracy",
        caption=verdict_caption(comparison),
        left=frozenset(("scheme", "vs")),
        groups={h: h.split()[-1] for h in headers[headers.index("vs") + 1 :]},
    )


def family_lines(comparison: Comparison) -> list[str]:
    """``family_texts`` as rich markup."""
    return [escape(line) for line in family_texts(comparison)]


def regime_lines(comparison: Comparison) -> list[str]:
    """``regime_texts`` as rich markup."""
    return [escape(line) for line in regime_texts(comparison)]


def family_texts(comparison: Comparison) -> list[str]:
    """One line per Holm family: what it holds, how many tests, and the equivalence margin."""
    pairs = comparison.pairs
    if pairs.empty:
        return []
    lines = []
    for family, rows in pairs.groupby("family", sort=False):
        first = rows.iloc[0]
        where = (
            "the study" if family == str(first["study"]) else f"grid point {first['experiment']}"
        )
        label = "" if first["study"] == "." else f"[{first['study']}] "
        metrics = " and ".join(METRICS[m] for m in METRICS if m in set(rows["metric"]))
        if not first["family_size"]:
            lines.append(f"{label}family: no comparison of {where} could be tested")
            continue
        lines.append(
            f"{label}family: Holm over {first['family_size']} tests of {where} (every "
            f"comparison {metrics}); equivalence margin {margin_words(first['margin'])}"
        )
    return lines


def regime_texts(comparison: Comparison) -> list[str]:
    """How long each study trained and whether its control overfits, once per study where
    its grid points agree."""
    lines = []
    regime = comparison.regime
    for study, rows in regime.groupby("study", sort=False) if len(regime) else []:
        said = [regime_line(row) for row in rows.itertuples()]
        label = "" if study == "." else f"[{study}] "
        if len(set(said)) == 1:
            lines.append(f"{label}regime: {said[0]}")
            continue
        lines += [f"[{e}] regime: {text}" for e, text in zip(rows["experiment"], said, strict=True)]
    return lines


# ---------------------------------------------------------------- other forms


def summary_markdown(comparison: Comparison) -> str:
    """The summary and the verdict table as markdown tables, without a trailing newline."""
    tables = [summary_cells(comparison.summary), verdict_cells(comparison.pairs)]
    blocks = []
    for headers, rows in tables:
        if rows:
            blocks.append(
                "\n".join(
                    [
                        "| " + " | ".join(headers) + " |",
                        "|" + "|".join("---" for _ in headers) + "|",
                        *("| " + " | ".join(cells) + " |" for cells in rows),
                    ]
                )
            )
    return "\n\n".join(blocks)


def summary_csv(comparison: Comparison) -> str:
    """The summary with every column, as summary.csv holds it."""
    return csv_text(comparison.summary)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as plain Python values at full precision (pandas' to_json rounds to 10
    digits); NaN, which JSON lacks, becomes null."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{key: json_value(value) for key, value in row.items()} for row in rows]


def comparison_json(comparison: Comparison) -> str:
    """Summary, pairwise tests, regime, runs left out and problems as one JSON object."""
    payload = {
        "summary": _records(comparison.summary),
        "comparisons": _records(comparison.pairs),
        "regime": _records(comparison.regime),
        "incomplete": _records(comparison.incomplete),
        "problems": comparison.problems,
        "ranking": comparison.ranking,
    }
    return json.dumps(payload, indent=2, allow_nan=False)


def comparison_notes(comparison: Comparison) -> list[str]:
    """The lines under the tables: the regime, the family, each verdict in words, the
    ranking, then each run left out of the means."""
    lines = regime_lines(comparison) + family_lines(comparison)
    lines += [f"- {escape(verdict)}" for verdict in comparison.pairs.get("verdict", [])]
    lines += [f"ranking: {escape(line)}" for line in comparison.ranking]
    for run in comparison.incomplete.itertuples():
        where = Path(run.experiment) / run.scheme / f"seed{run.seed}"
        error = f" ({run.error})" if run.error else ""
        lines.append(f"[yellow]not averaged[/] {escape(f'{where}: {run.status}{error}')}")
    return lines


def comparison_problems(comparison: Comparison) -> list[str]:
    """One line per file that could not be read or experiment that mixes configs."""
    return [f"[yellow]skipped[/] {escape(line)}" for line in comparison.problems]
