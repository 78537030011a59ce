"""How much a figure shows at most, whatever the number of runs: the caps, which grid points,
schemes and groups a figure keeps within them, and the note that says on the figure what it
left out (a 600-run folder drew a figure 79,440 pixels wide with a 600-entry legend).

No matplotlib here: the report's tables order grid points as the figures do."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bnorder.analysis.compare import GROUP
from bnorder.runs.metrics import grid_columns

DPI = 120  # every figure's: near a page's width at 1:1 for the sizes below
MAX_PIXELS = 4000  # no figure wider or taller than this at DPI, whatever it holds
MAX_INCHES = MAX_PIXELS / DPI
MAX_PANELS = 24  # grid points drawn at most: 4 × 6 panels, each still readable
MAX_SCHEMES = 20  # schemes drawn on a grid at most: tab20's colours, each its own
MAX_GROUPS = 20  # lines or bars on one axes at most: a legend still read at a glance
EVERY = "compare --format csv has all"


def bounded(width: float, height: float) -> tuple[float, float]:
    """A figure's size in inches, within MAX_PIXELS at DPI both ways: the last guard, for a
    size the caps on what is drawn did not already keep small."""
    return min(width, MAX_INCHES), min(height, MAX_INCHES)


def capped(items: list, cap: int, what: str, notes: list[str]) -> list:
    """The first ``cap`` of ``items``; where that leaves some out, says so in ``notes``."""
    if len(items) > cap:
        notes.append(f"first {cap} of {len(items)} {what}")
    return items[:cap]


def left_out(notes: list[str]) -> str:
    """What a figure says of what it did not draw: "" where it drew everything."""
    return "; ".join([*notes, EVERY]) if notes else ""


def noted(title: str, note: str) -> str:
    """A figure's title with what it left out under it, where it left something out."""
    return f"{title}\n{note}" if note else title


def grid_order(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary in the grid's order (dropout 0.1, 0.2…, not best first), or as it is where
    the values do not sort (lists, mixed types)."""
    try:
        return summary.sort_values(grid_columns(summary), kind="stable")
    except TypeError:
        return summary


def grid_points(summary: pd.DataFrame) -> pd.Series:
    """Each summary row's grid point: its folder ("dropout=0.1"), or its values where the
    grid point's folder itself was compared ("."); with the config where a folder holds
    several."""
    values = summary[grid_columns(summary)].astype(str)
    named = values.apply(
        lambda row: ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row.items()), axis=1
    )
    point = summary["experiment"].where(summary["experiment"] != ".", named)
    if summary.groupby("experiment")["config"].nunique().max() > 1:
        point = point + " [" + summary["config"] + "]"
    return point


@dataclass(frozen=True)
class Shown:
    """What a figure of the summary draws within the caps, and what it says of the rest."""

    points: list[str]  # grid points drawn, in the grid's order; empty: no grid
    schemes: list[str]  # schemes drawn, by name (their colours' order)
    groups: pd.MultiIndex  # the (experiment, config, scheme) groups drawn
    note: str  # what was left out, for the figure to say: "" where nothing was

    def kept(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` (runs, epochs, shifts, summary) of the groups drawn."""
        if frame.empty:
            return frame
        return frame[pd.MultiIndex.from_frame(frame[GROUP]).isin(self.groups)]


def shown(summary: pd.DataFrame) -> Shown:
    """On a grid, the first MAX_PANELS grid points in the grid's order and the best
    MAX_SCHEMES schemes (by their mean final test accuracy over grid points); without one,
    the first MAX_GROUPS groups of the summary (best first within an experiment)."""
    notes: list[str] = []
    if not grid_columns(summary):
        several = summary[["experiment", "config"]].drop_duplicates().shape[0] > 1
        what = "groups (experiment, config, scheme)" if several else "schemes (best first)"
        rows = capped(list(range(len(summary))), MAX_GROUPS, what, notes)
        chosen = summary.iloc[rows]
        schemes = sorted(set(chosen["scheme"]))
        return Shown([], schemes, pd.MultiIndex.from_frame(chosen[GROUP]), left_out(notes))
    ordered = grid_order(summary)
    named = grid_points(ordered)
    points = capped(list(dict.fromkeys(named)), MAX_PANELS, "grid points", notes)
    accuracy = summary.groupby("scheme")["final_test_acc_mean"].mean()
    ranked = list(accuracy.sort_values(ascending=False, na_position="last", kind="stable").index)
    schemes = sorted(capped(ranked, MAX_SCHEMES, "schemes (best first)", notes))
    chosen = ordered[named.isin(points).to_numpy() & ordered["scheme"].isin(schemes).to_numpy()]
    return Shown(points, schemes, pd.MultiIndex.from_frame(chosen[GROUP]), left_out(notes))
