"""Figures' axes say what they count: whole epochs and layers, plain numbers on log axes, BN
layers by name where they are few, and legends beside the curves (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_terminal import real_results

from bnorder import plots
from bnorder.compare import Comparison, compare


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Axes]:
    """Each figure's axes as drawn, by the function that drew them."""
    seen: dict[str, Axes] = {}
    save = plots._save

    def keep(fig: Figure, ax: Axes, path: plots.Target) -> plots.Target:
        out = save(fig, ax, path)
        FigureCanvasAgg(fig).draw()  # ticks are placed at draw time
        seen[str(Path(str(path)).stem)] = ax
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return seen


def labels(ax: Axes, axis: str) -> list[str]:
    """The tick labels shown: those of ticks within the axis' view."""
    shown = ax.xaxis if axis == "x" else ax.yaxis
    low, high = sorted(shown.get_view_interval())
    ticks = zip(shown.get_majorticklocs(), shown.get_majorticklabels(), strict=True)
    return [tick.get_text() for at, tick in ticks if low <= at <= high and tick.get_text()]


def test_epochs_whole_shifts_plain_legends_outside(tmp_path: Path, drawn: dict) -> None:
    comparison = compare(real_results(tmp_path / "runs"))
    for draw in (plots.learning_curves, plots.losses, plots.shift_over_epochs):
        draw(comparison, tmp_path / f"{draw.__name__}.png")
    for name in ("learning_curves", "losses", "shift_over_epochs"):
        assert labels(drawn[name], "x") == ["1", "2", "3", "4", "5", "6"], name
        legend = drawn[name].get_legend()
        assert legend.get_bbox_to_anchor().x0 > drawn[name].get_window_extent().x1  # beside
    assert len(drawn["losses"].get_legend().get_texts()) == 4  # one entry per scheme
    shift = labels(drawn["shift_over_epochs"], "y")
    assert "1" in shift and all("10^" not in label and "×" not in label for label in shift)
    assert all(float(label) == int(float(label)) for label in shift)  # 1, 2, 4… here


def layer_shifts(layers: int) -> Comparison:
    """A comparison's shifts for one scheme over ``layers`` BN layers, seeds 0 and 1."""
    rows = [
        {"experiment": ".", "config": "c", "scheme": "s", "seed": seed, "epoch": 1}
        | {"layer": i, "name": f"block{i}.bn", "shift": 1.5 + i / 10, "recalibrated": False}
        for i in range(layers)
        for seed in (0, 1)
    ]
    summary = pd.DataFrame({"experiment": ["."], "config": ["c"], "scheme": ["s"]})
    empty = pd.DataFrame()
    return Comparison(empty, empty, pd.DataFrame(rows), summary, empty, empty, [])


@pytest.mark.parametrize(("layers", "named"), [(5, True), (30, False)])
def test_bn_layers_by_name_where_few(tmp_path: Path, drawn: dict, layers: int, named: bool) -> None:
    plots.shift_by_layer(layer_shifts(layers), tmp_path / "shift.png")
    ax = drawn["shift"]
    shown = labels(ax, "x")
    if named:
        assert shown == [f"block{i}.bn" for i in range(layers)]
        assert ax.get_xticklabels()[0].get_rotation() > 0
    else:
        assert all(label.isdigit() for label in shown)
    assert all("×" not in label for label in labels(ax, "y"))
