"""Figures' axes say what they count: whole epochs and layers, plain numbers on log axes, BN
layers by name where they are few, and legends beside the curves (issue 18); on a grid, a panel
per grid point with one legend of schemes, each in one colour throughout."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from test_terminal import real_results

from bnorder.analysis import figures, plots
from bnorder.analysis.compare import Comparison, compare


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, plots.Panels]:
    """Each figure's panels as drawn, by the name of the file drawn into."""
    seen: dict[str, plots.Panels] = {}
    save = plots._save

    def keep(panels: plots.Panels, path: plots.Target) -> plots.Target:
        out = save(panels, path)
        FigureCanvasAgg(panels.fig).draw()  # ticks are placed at draw time
        seen[str(Path(str(path)).stem)] = panels
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
    axes = {name: panels.axes[""] for name, panels in drawn.items()}  # no grid: one axes
    for name in ("learning_curves", "losses", "shift_over_epochs"):
        assert labels(axes[name], "x") == ["1", "2", "3", "4", "5", "6"], name
        legend = axes[name].get_legend()
        assert legend.get_bbox_to_anchor().x0 > axes[name].get_window_extent().x1  # beside
        assert not drawn[name].fig.legends
    assert len(axes["losses"].get_legend().get_texts()) == 4  # one entry per scheme
    shift = labels(axes["shift_over_epochs"], "y")
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
    ax = drawn["shift"].axes[""]
    shown = labels(ax, "x")
    if named:
        assert shown == [f"block{i}.bn" for i in range(layers)]
        assert ax.get_xticklabels()[0].get_rotation() > 0
    else:
        assert all(label.isdigit() for label in shown)
    assert all("×" not in label for label in labels(ax, "y"))


def grid_comparison(folder: Path) -> Comparison:
    """The real run twice, as a grid over model.dropout (0.1, 0.5), with a made-up variance
    shift for 3 BN layers of each group."""
    for value in (0.1, 0.5):
        real_results(folder / f"dropout={value}", grid={"model.dropout": value})
    comparison = compare(folder, write=False)
    comparison.shifts = pd.DataFrame(
        [
            {"experiment": row.experiment, "config": row.config, "scheme": row.scheme}
            | {"seed": seed, "epoch": 6, "layer": i, "name": f"b{i}.bn", "shift": 1.5 + i}
            | {"recalibrated": False}
            for row in comparison.summary.itertuples()
            for i in range(3)
            for seed in (0, 1)
        ]
    )
    return comparison


def colour(handle: object) -> str:
    """A legend handle's colour: a bar's face, a line's, or an error bar's line's."""
    for part in ("patches", "lines"):  # a bar or error bar container: its first artist
        handle = getattr(handle, part, [handle])[0]
    get = getattr(handle, "get_color", None) or handle.get_facecolor
    return to_hex(get(), keep_alpha=False)


def test_grid_figures_are_panels_with_one_legend(tmp_path: Path, drawn: dict) -> None:
    comparison = grid_comparison(tmp_path / "grid")
    schemes = sorted(set(comparison.summary["scheme"]))
    figures.write_plots(comparison, tmp_path / "plots")
    curves = ("test_accuracy", "loss", "vshift_by_layer", "vshift_over_epochs")
    for name in (*curves, "final_accuracy", "gap"):
        panels = drawn[name]
        axes = list(panels.axes.values())
        assert [ax.get_title() for ax in axes] == ["dropout=0.1", "dropout=0.5"], name
        assert axes[0].get_shared_y_axes().joined(*axes), name  # panels compare at a glance
        assert all(ax.get_legend() is None for ax in axes), name
        [legend] = panels.fig.legends  # one, of schemes, beside every panel
        assert [text.get_text() for text in legend.get_texts()] == schemes, name
        right = max(ax.get_window_extent().x1 for ax in axes)
        assert legend.get_window_extent().x0 >= right, name
        legend_colours = dict(zip(schemes, map(colour, legend.legend_handles), strict=True))
        for ax in axes:  # a scheme in its one colour in every panel, as in the legend
            handles, found = ax.get_legend_handles_labels()
            assert sorted(found) == schemes, name
            assert {s: colour(h) for h, s in zip(handles, found, strict=True)} == legend_colours
    for name in ("test_accuracy", "loss", "vshift_over_epochs"):
        assert all(
            labels(ax, "x") == [str(e) for e in range(1, 7)] for ax in drawn[name].axes.values()
        )
    shift = labels(drawn["vshift_over_epochs"].axes["dropout=0.1"], "y")
    assert "1" in shift and all("×" not in label for label in shift)


def forest_marks(ax: Axes, colour: str) -> tuple[set, set]:
    """What a forest panel shows in one metric's ``colour``: its markers as (y, x), and its
    CI bars as (y, low, high), rounded."""
    from matplotlib.collections import LineCollection, PathCollection

    def of(kind: type, colours: str) -> list:
        return [
            c
            for c in ax.collections
            if isinstance(c, kind)
            and len(getattr(c, colours)())
            and to_hex(getattr(c, colours)()[0]) == colour
        ]

    markers = {
        (round(y, 6), round(x, 6))
        for c in of(PathCollection, "get_edgecolor")
        for x, y in c.get_offsets()
    }
    bars = {
        (round(start[1], 6), round(start[0], 6), round(end[0], 6))
        for c in of(LineCollection, "get_color")
        for start, end in c.get_segments()
    }
    return markers, bars


def test_forest_plot_per_grid_point_on_both_accuracies(tmp_path: Path) -> None:
    """The report's lead figure: per grid point a panel, each comparison a row (best first as
    trained, alike in every panel), both accuracies' differences and 95% CIs drawn where
    compare put them, 0 and the equivalence margin marked, a legend naming both."""
    from matplotlib.patches import Rectangle

    from bnorder.analysis.forest import STYLES, forest_figure

    for value in (0.1, 0.5):
        real_results(tmp_path / f"dropout={value}", grid={"model.dropout": value})
    comparison = compare(tmp_path, baseline="bn_only", write=False)
    pairs = comparison.pairs
    assert set(pairs["metric"]) == set(STYLES)  # the real runs re-estimated BN
    fig = forest_figure(comparison)
    FigureCanvasAgg(fig).draw()
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["dropout=0.1", "dropout=0.5"]
    assert axes[0].get_shared_y_axes().joined(*axes)
    rows = labels(axes[0], "y")
    trained = pairs[pairs["metric"] == "final_test_acc"].groupby("scheme")["diff_points"].mean()
    assert rows == list(trained.sort_values(ascending=False).index)  # best at the top
    assert axes[0].get_ylim()[0] > axes[0].get_ylim()[1]  # inverted: row 0 on top
    for ax, point in zip(axes, ("dropout=0.1", "dropout=0.5"), strict=True):
        here = pairs[pairs["experiment"] == point]
        [band] = [p for p in ax.patches if isinstance(p, Rectangle)]
        margin = here["margin"].max()
        assert (band.get_x(), band.get_width()) == pytest.approx((-margin, 2 * margin))
        assert any(list(line.get_xdata()) == [0, 0] for line in ax.get_lines())  # the 0 line
        for metric, (_, colour, offset) in STYLES.items():
            chosen = here[here["metric"] == metric].itertuples()
            want = [(rows.index(r.scheme) + offset, r) for r in chosen]
            markers, bars = forest_marks(ax, colour)
            assert markers == {(round(y, 6), round(r.diff_points, 6)) for y, r in want}
            ends = {
                (round(y, 6), round(r.diff_ci_low, 6), round(r.diff_ci_high, 6)) for y, r in want
            }
            assert bars == ends, metric
    [legend] = fig.legends
    texts = [text.get_text() for text in legend.get_texts()]
    metric_labels = pairs.drop_duplicates("metric").set_index("metric")["metric_label"]
    assert texts == [*(metric_labels[m] for m in STYLES), "equivalence margin ±1 point"]
    assert "forest.png" in figures.plot_pngs(comparison)  # compare --plots writes it too
    every = compare(tmp_path, all_pairs=True, write=False)  # no one baseline: rows name both
    shown = labels(forest_figure(every).axes[0], "y")
    assert sorted(shown) == sorted(set(every.pairs["scheme"] + " vs " + every.pairs["baseline"]))


def test_names_with_dollars_are_plain_text_in_every_figure(tmp_path: Path) -> None:
    """A scheme or folder name with two ``$`` is text, not mathtext (matplotlib failed on
    ``cost$\\frac$`` after summary.csv was written)."""
    comparison = compare(real_results(tmp_path / "runs"), write=False)
    odd = "cost$\\frac$"
    frames = (comparison.runs, comparison.epochs, comparison.shifts, comparison.summary)
    for frame in (f for f in frames if not f.empty):
        frame["scheme"] = frame["scheme"].replace("bn_only", odd)
        frame["experiment"] = "$x$$"
    for column in ("scheme", "baseline"):
        comparison.pairs[column] = comparison.pairs[column].replace("bn_only", odd)
    written = figures.write_plots(comparison, tmp_path / "plots")
    assert len(written) >= 5 and all(path.stat().st_size > 0 for path in written)
    assert all(png[:4] == b"\x89PNG" for png in figures.plot_pngs(comparison).values())


def many_runs(folder: Path, points: int, copies: int, grid: bool) -> Comparison:
    """The real 4 schemes × 3 seeds, ``copies`` times under other scheme names, at ``points``
    grid points over model.dropout (or, without a grid, in as many experiments), with a made-up
    variance shift: one compared grid point's frames relabelled, not thousands of runs compared."""
    real_results(folder / "dropout=0", grid={"model.dropout": 0.0})
    one = compare(folder, baseline="bn_only", write=False)

    def copied(frame: pd.DataFrame, point: int, copy: int) -> pd.DataFrame:
        out = frame.assign(experiment=f"dropout={point}" if grid else f"e{point}")
        out["scheme"] = out["scheme"] + (f"_{copy}" if copy else "")
        if grid:
            return out.assign(**{"model.dropout": point / 1000})
        return out.drop(columns=["model.dropout"], errors="ignore")  # epochs have none

    frames = {
        name: pd.concat(
            [copied(getattr(one, name), i, j) for i in range(points) for j in range(copies)],
            ignore_index=True,
        )
        for name in ("runs", "epochs", "summary", "pairs")
    }
    shifts = frames["summary"][["experiment", "config", "scheme"]].merge(
        pd.DataFrame({"seed": [0, 1], "epoch": 6}), how="cross"
    )
    shifts = shifts.merge(pd.DataFrame({"layer": range(3), "name": "b.bn"}), how="cross")
    shifts = shifts.assign(shift=1.5 + shifts["layer"], recalibrated=False)
    empty = pd.DataFrame(columns=["experiment", "config", "scheme"])
    return Comparison(frames["runs"], frames["epochs"], shifts, frames["summary"],
                      frames["pairs"], empty, [])  # fmt: skip


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every Figure saved, in the order saved: one per figure drawn, however it is drawn."""
    from matplotlib.figure import Figure

    figures_saved: list[Figure] = []
    save = Figure.savefig

    def keep(fig: Figure, *args: object, **kwargs: object) -> None:
        figures_saved.append(fig)
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures_saved


@pytest.mark.parametrize(
    ("points", "copies", "grid", "left_out", "forest_left_out"),
    [  # just past each cap: drawing thousands of runs' figures takes a minute
        # MAX_PANELS lowered to 6 here (drawing 24 panels nine times takes half a minute);
        # every figure's size goes through bounds.bounded, which no panel count passes
        (8, 1, True, "first 6 of 8 grid points; compare --format csv", "of 8 grid points"),
        (2, 6, True, "first 20 of 24 schemes (best first)", None),  # the forest has room
        (1, 15, False, "first 20 of 60 schemes", "first 40 of 45 comparisons"),  # one folder
        (30, 1, False, "first 20 of 120 groups", "first 24 of 30 grid points"),  # 30 folders
        (2, 1, True, None, None),  # a small study draws all, and says nothing of it
    ],
)
def test_figures_bounded_whatever_the_runs(
    tmp_path: Path,
    saved: list,
    monkeypatch: pytest.MonkeyPatch,
    points: int,
    copies: int,
    grid: bool,
    left_out: str | None,
    forest_left_out: str | None,
) -> None:
    """Every figure within MAX_PIXELS both ways, its legends of MAX_SCHEMES entries at most,
    and, where it left grid points, schemes or rows out, a line saying so (a 600-run folder
    drew a figure 79,440 pixels wide, with a 600-entry legend)."""
    from matplotlib.text import Text

    from bnorder.analysis import bounds

    if grid and points > 2:
        from bnorder.analysis import forest

        for module in (bounds, forest):
            monkeypatch.setattr(module, "MAX_PANELS", 6)
    comparison = many_runs(tmp_path / "runs", points, copies, grid)
    pngs = figures.plot_pngs(comparison)
    pngs["grid_accuracy.png"] = figures.png_bytes(lambda to: plots.grid_heatmap(comparison, to))
    assert len(saved) == len(pngs) == 9
    schemes = comparison.summary["scheme"].nunique()
    cap = min(bounds.MAX_SCHEMES, schemes) if grid else bounds.MAX_GROUPS
    for (name, png), fig in zip(pngs.items(), saved, strict=True):
        width, height = struct.unpack(">II", png[16:24])  # the PNG header's IHDR
        assert width <= bounds.MAX_PIXELS and height <= bounds.MAX_PIXELS, (name, width, height)
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        entries = [len(legend.get_texts()) for legend in legends]
        assert all(n <= cap for n in entries), name  # a scheme or group an entry
        text = "\n".join(t.get_text() for t in fig.findobj(Text))
        said = forest_left_out if name == "forest.png" else left_out
        if said is None:
            assert bounds.EVERY not in text, name
        else:
            assert said in text and bounds.EVERY in text, name
    if left_out is None:  # small: every scheme in the legend, every grid point a panel
        [legend] = saved[0].legends
        assert len(legend.get_texts()) == schemes
        assert len(saved[0].axes) == points
