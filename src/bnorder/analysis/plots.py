"""Figures from a comparison: what a reader should look at rather than read.

Matplotlib Figure objects rendered by Agg straight to PNG: no pyplot, no display, no global
state. One group is one (experiment,
config, scheme), drawn as its mean over seeds; bands and error bars are 95% Student-t confidence
intervals over seeds. On a grid, each figure is small multiples: a panel per grid point, a
scheme one colour in them all. However many runs, a figure draws within bounds.py's caps and
says what it left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from scipy import stats

from bnorder.analysis.bounds import (
    DPI,
    Shown,
    bounded,
    grid_order,
    grid_points,
    noted,
    shown,
)
from bnorder.analysis.compare import GROUP, Comparison
from bnorder.runs.metrics import METRIC_TABLE, grid_columns

Target = Path | BinaryIO  # a file, or a buffer for a report that embeds the figure
CI_NOTE = "shaded: 95% CI of the mean over seeds (Student t)"
NAMED_LAYERS = 12  # up to this many BN layers, the axis names each; past it, numbers
# curves' figures: constrained layout makes room for the legend beside the axes, where it
# hides no curve however many groups there are
CURVES_SIZE = (9, 4.5)
# on a grid: inches per panel, and the room around them for the shared labels and the legend
PANEL_SIZE, PANEL_MARGIN = (3.0, 2.3), (2.0, 1.2)
PANEL_COLUMNS = 4  # past this many grid points, more rows rather than panels too narrow to read


def _label(key: tuple, several: bool) -> str:
    experiment, config, scheme = key
    return f"{experiment}/{scheme} [{config}]" if several else scheme


def _mean_ci(values: pd.DataFrame, by: str = "epoch") -> pd.DataFrame:
    """Per ``by`` value: mean, and the half-width of its 95% t interval (0 with one seed)."""
    grouped = values.groupby(by)
    out = grouped.mean()
    n = grouped.count()
    sem = grouped.std(ddof=1) / n**0.5
    t = n.map(lambda k: stats.t.ppf(0.975, k - 1) if k > 1 else 0.0)
    return out.join((sem * t).fillna(0.0).add_suffix("_ci"))


@dataclass(frozen=True)
class Panels:
    """Where a figure draws each group, and what it names it. Without a grid: one axes, a
    colour and a legend entry per group. On a grid: a panel per grid point, titled with its
    values, each scheme one colour in every panel and one legend of schemes for the figure
    (every grid point × scheme on one axes reads as noise)."""

    fig: Figure
    axes: dict[str, Axes]  # by grid point; without a grid, the one axes under ""
    points: dict[tuple[str, str], str]  # (experiment, config) → its grid point; empty: no grid
    colours: dict[str, str]  # by scheme, on a grid
    several: bool  # without a grid: several experiments or configs, so labels name them
    shown: Shown  # the groups drawn, within the caps, and what the title says of the rest

    @property
    def grid(self) -> bool:
        return bool(self.points)

    def kept(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` of the groups this figure draws."""
        return self.shown.kept(frame)

    def ax(self, key: tuple) -> Axes:
        """The axes of a group (experiment, config, scheme)."""
        return self.axes[self.points.get(tuple(key[:2]), "")]

    def style(self, key: tuple) -> dict[str, Any]:
        """A group's label, and on a grid its scheme's colour (else the colour cycle's)."""
        if not self.grid:
            return {"label": _label(key, self.several)}
        return {"label": key[2], "color": self.colours[key[2]]}

    def name(self, xlabel: str, ylabel: str, title: str, fontsize: int = 10) -> None:
        """Axis labels and the title, once for the whole figure on a grid; under the title,
        what was left out, if anything was."""
        title = noted(title, self.shown.note)
        if not self.grid:
            ax = self.axes[""]
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.set_title(title, fontsize=fontsize)
            return
        self.fig.supxlabel(xlabel, fontsize=9)
        self.fig.supylabel(ylabel, fontsize=9)
        self.fig.suptitle(title, fontsize=fontsize)


def _panels(comparison: Comparison, size: tuple[float, float] = CURVES_SIZE) -> Panels:
    """One axes of ``size``, or on a grid a panel per grid point drawn in the grid's order,
    sharing both axes (the y scale alike, so that panels compare at a glance), in rows of
    PANEL_COLUMNS."""
    summary, several, drawn = comparison.summary, _several(comparison), shown(comparison.summary)
    if not grid_columns(summary):
        fig = Figure(figsize=size, layout="constrained")
        return Panels(fig, {"": fig.subplots()}, {}, {}, several, drawn)
    ordered = drawn.kept(grid_order(summary))
    keys = ordered[["experiment", "config"]].itertuples(index=False, name=None)
    points = dict(zip(keys, grid_points(ordered), strict=True))
    names = drawn.points
    columns = len(names) if len(names) <= 3 else min(PANEL_COLUMNS, math.ceil(len(names) ** 0.5))
    rows = math.ceil(len(names) / columns)
    # never narrower than two panels: the two-line title over one would run into the legend
    width = PANEL_MARGIN[0] + PANEL_SIZE[0] * max(2, columns)
    height = PANEL_MARGIN[1] + PANEL_SIZE[1] * rows
    fig = Figure(figsize=bounded(width, height), layout="constrained")
    grid = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).flatten()
    for ax in grid[len(names) :]:
        ax.remove()
    for i, (name, ax) in enumerate(zip(names, grid, strict=False)):
        ax.set_title(name, fontsize=9)
        if i + columns >= len(names):  # no panel below it: it shows the x axis' labels
            ax.xaxis.set_tick_params(labelbottom=True)
    axes = dict(zip(names, grid, strict=False))
    return Panels(fig, axes, points, _scheme_colours(drawn.schemes), several, drawn)


def _scheme_colours(schemes: list[str]) -> dict[str, str]:
    """A colour per scheme drawn, by name, so that a scheme looks the same in every panel."""
    cmap = colormaps["tab10" if len(schemes) <= 10 else "tab20"]
    return {scheme: cmap(i % cmap.N) for i, scheme in enumerate(schemes)}


def learning_curves(comparison: Comparison, path: Target) -> Target:
    panels = _panels(comparison)
    for key, group in panels.kept(comparison.epochs).groupby(GROUP, sort=False):
        curve = _mean_ci(group[["epoch", "test_acc"]])
        ax = panels.ax(key)
        line = ax.plot(curve.index, curve["test_acc"] * 100, **panels.style(key))[0]
        low = (curve["test_acc"] - curve["test_acc_ci"]) * 100
        high = (curve["test_acc"] + curve["test_acc_ci"]) * 100
        ax.fill_between(curve.index, low, high, color=line.get_color(), alpha=0.2)
    for ax in panels.axes.values():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    ylabel = METRIC_TABLE.axis_label("test_acc")
    panels.name("epoch", ylabel, f"Test accuracy per epoch\n{CI_NOTE}")
    return _save(panels, path)


def losses(comparison: Comparison, path: Target) -> Target:
    """Per group: the train loss in eval mode on the fixed training sample (solid), the test
    loss (dashed), both measured alike, and the running train-mode loss (dotted, dropout and
    augmentation on). Dropout before BN shows as a train-mode loss that falls while the
    eval-mode losses, train and test together, rise: not overfitting, the variance shift.
    Runs without eval-mode train figures (train.vshift_sample: 0, older versions) have the
    dotted line only."""
    panels = _panels(comparison)
    for key, group in panels.kept(comparison.epochs).groupby(GROUP, sort=False):
        measured = "train_eval_loss" in group and group["train_eval_loss"].notna().all()
        columns = ["train_loss", "test_loss", *(["train_eval_loss"] if measured else [])]
        curve = group.groupby("epoch")[columns].mean()
        ax, style = panels.ax(key), panels.style(key)
        label = style["label"]  # once per group, on its colour: the title says the styles
        color = ax.plot(curve.index, curve["test_loss"], "--", color=style.get("color"))
        color = color[0].get_color()
        if measured:
            ax.plot(curve.index, curve["train_eval_loss"], "-", color=color, label=label)
        ax.plot(
            curve.index, curve["train_loss"], ":", color=color, label=None if measured else label
        )
    for ax in panels.axes.values():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels.name(
        "epoch",
        "cross-entropy (mean over seeds)",
        "Loss in eval mode: train (solid, a fixed training sample) and test (dashed);\n"
        "dotted: the running train loss in train mode (dropout, augmentation on)",
    )
    return _save(panels, path)


def _geometric(values: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """Per ``by`` value: the geometric mean of ``column`` over seeds, and its 95% t interval
    taken on the log scale (a ratio's spread is multiplicative): columns mean, low, high."""
    logs = values[[by, column]].assign(**{column: np.log(values[column])})
    curve = _mean_ci(logs, by=by)
    centre, half = curve[column], curve[f"{column}_ci"]
    return pd.DataFrame(
        {"mean": np.exp(centre), "low": np.exp(centre - half), "high": np.exp(centre + half)}
    )


SHIFT_NOTE = "geometric mean over seeds; bars and bands: its 95% CI (Student t, on log shift)"


def shift_by_layer(comparison: Comparison, path: Target) -> Target:
    """Per group, the variance shift of each BN layer after the last epoch, in depth order
    (solid), and after BN re-calibration where the runs did it (dashed, same colour)."""
    shifts, panels = comparison.shifts, _panels(comparison)
    for key, group in panels.kept(shifts).groupby(GROUP, sort=False):
        last = group[group["epoch"] == group["epoch"].max()]
        ax, color = panels.ax(key), panels.style(key).get("color")
        for recalibrated, style in ((False, "o-"), (True, "s--")):
            rows = last[last["recalibrated"] == recalibrated]
            if rows.empty:
                continue
            curve = _geometric(rows, "layer", "shift")
            bars = ax.errorbar(
                curve.index,
                curve["mean"],
                yerr=[curve["mean"] - curve["low"], curve["high"] - curve["mean"]],
                fmt=style,
                ms=4,
                capsize=3,
                color=color,
                label=None if recalibrated else panels.style(key)["label"],
            )
            color = bars.lines[0].get_color()
    for ax in panels.axes.values():
        _plain_log(ax)
        _layer_axis(ax, shifts)
    panels.name(
        "BN layer (depth order)",
        "variance shift (1 = none, log scale)",
        "Variance shift per BN layer after the last epoch (Li et al. 2019); dashed: after "
        f"BN re-calibration\n{SHIFT_NOTE}",
        fontsize=9,
    )
    return _save(panels, path)


def shift_over_epochs(comparison: Comparison, path: Target) -> Target:
    """The largest shift over a model's BN layers, per epoch it was measured."""
    epochs, panels = comparison.epochs, _panels(comparison)
    measured = panels.kept(epochs).dropna(subset=["vshift_max"])
    for key, group in measured.groupby(GROUP, sort=False):
        curve = _geometric(group, "epoch", "vshift_max")
        ax = panels.ax(key)
        line = ax.plot(curve.index, curve["mean"], "o-", ms=3, **panels.style(key))
        color = line[0].get_color()
        ax.fill_between(curve.index, curve["low"], curve["high"], color=color, alpha=0.2)
    for ax in panels.axes.values():
        _plain_log(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ylabel = f"{METRIC_TABLE.metric('vshift_max').label} (log scale)"
    panels.name("epoch", ylabel, f"Variance shift during training\n{SHIFT_NOTE}", fontsize=9)
    return _save(panels, path)


def _bar_values(summary: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per summary row, in points: the mean, and how far its CI reaches below and above it."""
    mean = summary[f"{column}_mean"] * 100
    low = (summary[f"{column}_mean"] - summary[f"{column}_ci_low"]).fillna(0) * 100
    high = (summary[f"{column}_ci_high"] - summary[f"{column}_mean"]).fillna(0) * 100
    return mean, low, high


def bars(comparison: Comparison, column: str, title: str, path: Target) -> Target:
    """The summary's mean of figure ``column`` per group and its 95% CI, in percent or points."""
    ylabel = METRIC_TABLE.axis_label(column)
    if grid_columns(comparison.summary):
        return _panel_bars(comparison, column, ylabel, title, path)
    drawn = shown(comparison.summary)
    summary = drawn.kept(comparison.summary).dropna(subset=[f"{column}_mean"])
    several = _several(comparison)
    labels = [_label(tuple(k), several) for k in summary[GROUP].itertuples(index=False)]
    mean, low, high = _bar_values(summary, column)
    fig = Figure(figsize=bounded(max(5, 1.1 * len(labels) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(labels, mean, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.8)
    for x, (value, n) in enumerate(zip(mean, summary["runs"], strict=True)):
        ax.annotate(  # beside the bar's end, away from zero: readable on short bars too
            f"{value:.1f}\nn={n}",
            (x, value),
            xytext=(14, 0),
            textcoords="offset points",
            ha="left",
            va="bottom" if value >= 0 else "top",
            fontsize=8,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.margins(y=0.15)  # room above the tallest bar's label, under the title
    ax.set_ylabel(ylabel)
    note = "error bars: 95% CI over seeds (none where n = 1)"
    ax.set_title(noted(f"{title}\n{note}", drawn.note), fontsize=10)
    # rotated labels end under their bar, not half a bar to its right
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", rotation_mode="anchor")
    fig.savefig(path, dpi=DPI, format="png")  # a buffer has no suffix to tell
    return path


def _panel_bars(
    comparison: Comparison, column: str, ylabel: str, title: str, path: Target
) -> Target:
    """bars on a grid: a panel per grid point, each scheme at one place and in one colour in
    every panel; each bar's mean and n above the end of its error bar, where no neighbour is."""
    panels = _panels(comparison)
    schemes = list(panels.colours)
    summary = panels.kept(comparison.summary).dropna(subset=[f"{column}_mean"])
    keys = [tuple(k) for k in summary[GROUP].itertuples(index=False)]
    values = zip(keys, *_bar_values(summary, column), summary["runs"], strict=True)
    for key, mean, low, high, n in values:
        ax, x = panels.ax(key), schemes.index(key[2])
        ax.bar(x, mean, yerr=[[low], [high]], capsize=3, alpha=0.85, **panels.style(key))
        end, up = (mean + high, True) if mean >= 0 else (mean - low, False)
        ax.annotate(
            f"{mean:.1f}\nn={n}",
            (x, end),
            xytext=(0, 2 if up else -2),
            textcoords="offset points",
            ha="center",
            va="bottom" if up else "top",
            fontsize=7,
        )
    for ax in panels.axes.values():
        ax.axhline(0, color="black", linewidth=0.8)
        ax.margins(y=0.25)  # room for the labels above the tallest bar, under the title
        ax.set_xticks(range(len(schemes)), schemes, rotation=35, ha="right", fontsize=8)
        ax.xaxis.set_tick_params(rotation_mode="anchor")
    note = "error bars: 95% CI over seeds (none where n = 1)"
    panels.name("scheme", ylabel, f"{title}\n{note}")
    return _save(panels, path)


def gap_bars(comparison: Comparison, path: Target) -> Target:
    """Train − test accuracy, both in eval mode where runs measured it so, else train mode."""
    if "gap_mean" in comparison.summary:
        return bars(comparison, "gap", "Generalisation gap", path)
    title = "Generalisation gap, train accuracy in train mode (dropout, augmentation on)"
    return bars(comparison, "gap_train_mode", title, path)


def _several(comparison: Comparison) -> bool:
    return comparison.summary[["experiment", "config"]].drop_duplicates().shape[0] > 1


def _plain_log(ax: Axes) -> None:
    """A log y axis labelled in plain numbers, where matplotlib's own labels read 3×10⁰ on
    a shift axis that rarely spans a decade: 1, 1.5, 2, 3, 4, 6 over a short range, powers of
    2 over a longer one, of 10 past 4,096-fold. Call it once the data are drawn."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    span = math.log2(high / low)
    base, subs = (2, (1.0, 1.5)) if span <= 4 else (2, (1.0,)) if span <= 12 else (10, (1.0,))
    # numticks above the count these ranges give: matplotlib thins them otherwise, and with
    # subs it can leave none at all
    ax.yaxis.set_major_locator(LogLocator(base=base, subs=subs, numticks=30))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())  # base-10 minor ticks between base-2 labels mislead


def _layer_axis(ax: Axes, shifts: pd.DataFrame) -> None:
    """BN layers by name where they are few and every group's model names them alike,
    rotated to stay apart; else by index, whole numbers only."""
    names = shifts.groupby("layer")["name"].unique() if "name" in shifts else pd.Series()
    if 0 < len(names) <= NAMED_LAYERS and all(len(found) == 1 for found in names):
        labels = [found[0] for found in names]
        ax.set_xticks(names.index, labels, rotation=30, ha="right", rotation_mode="anchor")
        ax.tick_params(axis="x", labelsize=8)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(panels: Panels, path: Target) -> Target:
    """Grid lines, and the legend beside the axes (top left of the space on their right),
    where it covers no curve: two columns where there are many groups; on a grid, one legend
    of the schemes drawn, beside every panel."""
    for ax in panels.axes.values():
        ax.grid(alpha=0.3)
    if panels.grid:
        _scheme_legend(panels)
    elif count := len(panels.axes[""].get_legend_handles_labels()[1]):
        panels.axes[""].legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            borderaxespad=0,
            fontsize=8,
            ncols=1 if count <= 15 else 2,
            frameon=False,
        )
    panels.fig.savefig(path, dpi=DPI, format="png")  # a buffer has no suffix to tell
    return path


def _scheme_legend(panels: Panels) -> None:
    """The figure's one legend: each scheme drawn, in the colours' order, by its first handle
    (any panel's is alike); panels with nothing to show say why rather than stay blank."""
    handles: dict[str, Any] = {}
    for ax in panels.axes.values():
        found = ax.get_legend_handles_labels()
        for handle, label in zip(*found, strict=True):
            handles.setdefault(label, handle)
        if not found[1]:
            ax.text(0.5, 0.5, "no run measured this", ha="center", transform=ax.transAxes)
    labels = [scheme for scheme in panels.colours if scheme in handles]
    panels.fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="outside right upper",
        fontsize=8,
        frameon=False,
        title="scheme",
        title_fontsize=8,
    )


def grid_heatmap(comparison: Comparison, path: Target) -> Target:
    """Mean final test accuracy by scheme (rows) × grid point (columns), each cell labelled
    with its mean and n: a grid's results at one glance. Empty cells: no completed run. The
    grid points and schemes the other figures draw, at most."""
    summary, drawn = comparison.summary, shown(comparison.summary)
    table = summary.assign(point=grid_points(summary), acc=summary["final_test_acc_mean"] * 100)
    table = drawn.kept(table)
    means = table.pivot_table(index="scheme", columns="point", values="acc", dropna=False)
    runs = table.pivot_table(index="scheme", columns="point", values="runs", aggfunc="sum")
    means = means.loc[means.mean(axis=1).sort_values(ascending=False).index]
    fig = Figure(figsize=bounded(max(5, 1.3 * means.shape[1] + 3), max(3, 0.5 * len(means) + 2)))
    ax = fig.subplots()
    image = ax.imshow(means.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    counts = runs.reindex_like(means).fillna(0).to_numpy(dtype=int)
    for (i, j), value in np.ndenumerate(means.to_numpy(dtype=float)):
        if not np.isnan(value):
            label = f"{value:.1f}\nn={counts[i, j]}"
            light = image.norm(value) > 0.6  # viridis' yellow end: dark text stays legible
            color = "black" if light else "white"
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(means.shape[1]), means.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(means)), means.index, fontsize=8)
    fig.colorbar(image, ax=ax, label=METRIC_TABLE.axis_label("final_test_acc"))
    title = "Final test accuracy by scheme and grid point (mean over seeds)"
    ax.set_title(noted(title, drawn.note), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path
