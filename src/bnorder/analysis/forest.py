"""The lead figure of a report: a forest plot of compare's verdicts.

Each scheme's difference from its baseline in points, with its 95% CI, a panel per grid point,
on both accuracies (a marker and colour each, on the same row, so that the part of a cost that
re-estimating BN takes away reads as the distance between them), against a line at 0 and the
equivalence margin shaded. It draws ``comparison.pairs`` as compare computed them: nothing is
recomputed here. Within bounds.py's caps: at most FOREST_ROWS rows, and as many panels as fit
under MAX_PIXELS, the rest named as left out."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bnorder.analysis.bounds import (
    DPI,
    MAX_INCHES,
    MAX_PANELS,
    bounded,
    capped,
    grid_order,
    grid_points,
    left_out,
    noted,
)
from bnorder.analysis.compare import Comparison
from bnorder.analysis.plots import Target
from bnorder.analysis.verdicts import METRICS, Outcome, margin_words

FOREST_COLUMNS = 4  # panels side by side; past this many grid points, more rows of them
ROW_INCHES = 0.34  # per scheme row of a panel: two markers and their bars stay apart
FOREST_ROWS = 40  # comparisons drawn at most: 40 rows still leave room for two rows of panels
TITLE_INCHES, PANEL_INCHES = 1.6, 0.55  # the title and legend; each panel's title and axis
STYLES = {  # metric → (marker, colour, offset from the row's centre)
    "final_test_acc": ("o", "#1f5fa8", -0.17),
    "test_acc_recalibrated": ("s", "#d95f02", 0.17),
}
DECIDED = {Outcome.better.value, Outcome.worse.value, Outcome.equivalent.value}
MARGIN_COLOUR = "#d9dce0"


def row_labels(pairs: pd.DataFrame) -> pd.Series:
    """What names each comparison's row: its scheme where every row has one baseline, else
    "scheme vs baseline"."""
    if pairs["baseline"].nunique() == 1:
        return pairs["scheme"].astype(str)
    return pairs["scheme"].astype(str) + " vs " + pairs["baseline"].astype(str)


def forest_order(pairs: pd.DataFrame, labels: pd.Series) -> list[str]:
    """The rows top to bottom: best first by their mean difference as trained over the grid
    points (by the first metric compared where none was as trained), alike in every panel."""
    first = next((m for m in METRICS if m in set(pairs["metric"])), pairs["metric"].iloc[0])
    chosen = pairs["metric"] == first
    means = pairs.loc[chosen, "diff_points"].groupby(labels[chosen], sort=False).mean()
    ranked = list(means.sort_values(ascending=False, na_position="last").index)
    return ranked + [label for label in dict.fromkeys(labels) if label not in ranked]


def _figure(points: int, rows: int) -> tuple[Figure, list]:
    """A panel per grid point, ``FOREST_COLUMNS`` abreast at most, sharing both axes."""
    columns = max(1, min(FOREST_COLUMNS, points))
    lines = math.ceil(points / columns)
    width = {1: 7.0, 2: 8.0}.get(columns, 9.0)  # near the page's width at 120 dpi: read 1:1
    height = TITLE_INCHES + lines * (PANEL_INCHES + ROW_INCHES * rows)
    fig = Figure(figsize=bounded(width, height), layout="constrained")
    grid = fig.subplots(lines, columns, sharex=True, sharey=True, squeeze=False).flatten()
    for ax in grid[points:]:
        ax.remove()
    return fig, list(grid[:points])


def _draw_metric(ax, rows: pd.DataFrame, y: pd.Series, metric: str) -> None:
    """One metric's differences and 95% CIs in one panel; a marker filled where the outcome is
    decided (better, worse, equivalent), hollow where not; no bar where no CI is defined."""
    marker, colour, offset = STYLES.get(metric, ("D", "#555555", 0.0))
    x = rows["diff_points"]
    low = (x - rows.get("diff_ci_low", math.nan)).fillna(0)
    high = (rows.get("diff_ci_high", math.nan) - x).fillna(0)
    ax.errorbar(x, y + offset, xerr=[low, high], fmt="none", ecolor=colour, capsize=2, lw=1.2)
    decided = rows["outcome"].isin(DECIDED)
    for filled, face in ((True, colour), (False, "white")):
        chosen = decided == filled
        ax.scatter(x[chosen], y[chosen] + offset, marker=marker, s=30, zorder=3,
                   facecolors=face, edgecolors=colour, linewidths=1.2)  # fmt: skip


def _legend(fig: Figure, pairs: pd.DataFrame, margin: float, columns: int) -> None:
    metrics = [m for m in STYLES if m in set(pairs["metric"])]
    labels = pairs.drop_duplicates("metric").set_index("metric")["metric_label"]
    handles = [
        Line2D([], [], marker=STYLES[m][0], color=STYLES[m][1], lw=1.2, label=str(labels[m]))
        for m in metrics
    ]
    band = f"equivalence margin {margin_words(margin)}" if math.isfinite(margin) else "margin"
    handles.append(Patch(color=MARGIN_COLOUR, label=band))
    fig.legend(
        handles=handles, loc="outside lower center", ncols=columns, fontsize=9, frameon=False
    )


def forest_plot(comparison: Comparison, path: Target) -> Target:
    """``forest_figure`` drawn into ``path``, a file or a buffer."""
    forest_figure(comparison).savefig(path, dpi=DPI, format="png")  # a buffer has no suffix
    return path


def panels_that_fit(rows: int) -> int:
    """How many panels of ``rows`` rows fit under MAX_INCHES, FOREST_COLUMNS abreast: whole
    rows of panels, one at least, MAX_PANELS at most."""
    lines = int((MAX_INCHES - TITLE_INCHES) // (PANEL_INCHES + ROW_INCHES * rows))
    return min(MAX_PANELS, max(1, lines) * FOREST_COLUMNS)


def _title(pairs: pd.DataFrame, note: str) -> str:
    """What the forest plot shows, how to read it, and what it left out."""
    baselines = set(pairs["baseline"].astype(str))
    what = (
        f"Each scheme's test accuracy minus {baselines.pop()}'s"
        if len(baselines) == 1
        else "Each comparison's difference (scheme − baseline)"
    )
    how = "filled: a decided outcome (better, worse, equivalent); hollow: not; no bar: no CI"
    return noted(f"{what}, in points, with its 95% CI\n{how}", note)


def forest_figure(comparison: Comparison) -> Figure:
    """Each scheme's difference from its baseline with its 95% CI, a panel per grid point in
    the grid's order, both accuracies on each row, 0 and the equivalence margin marked."""
    pairs = grid_order(comparison.pairs).reset_index(drop=True)
    points, labels, notes = grid_points(pairs), row_labels(pairs), []
    order = capped(forest_order(pairs, labels), FOREST_ROWS, "comparisons (best first)", notes)
    names = list(dict.fromkeys(points))
    names = capped(names, panels_that_fit(len(order)), "grid points", notes)
    drawn = labels.isin(order) & points.isin(names)
    pairs, points, labels = pairs[drawn], points[drawn], labels[drawn]
    fig, axes = _figure(len(names), len(order))
    for name, ax in zip(names, axes, strict=True):
        here = pairs[points == name]
        margin = float(here["margin"].max())
        if math.isfinite(margin):
            ax.axvspan(-margin, margin, color=MARGIN_COLOUR, zorder=0, lw=0)
        ax.axvline(0, color="black", lw=0.8, zorder=1)
        for metric, rows in here.groupby("metric", sort=False):
            _draw_metric(ax, rows, labels[rows.index].map(order.index), str(metric))
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=9)
    axes[0].set_yticks(range(len(order)), order)
    axes[0].set_ylim(len(order) - 0.5, -0.5)  # the best at the top
    for ax in axes:
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[-min(len(axes), FOREST_COLUMNS) :]:  # the bottom row's
        ax.set_xlabel("difference (points)", fontsize=9)
    _legend(fig, pairs, float(pairs["margin"].max()), columns=3 if len(axes) > 2 else 1)
    fig.suptitle(_title(pairs, left_out(notes)), fontsize=10)
    return fig
