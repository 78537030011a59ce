"""Which figures a comparison has: ``compare --plots`` writes them as files, the report
embeds the same ones as PNG bytes. Drawing lives in plots.py and forest.py."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

from bnorder.analysis import plots
from bnorder.analysis.compare import Comparison
from bnorder.analysis.forest import forest_plot
from bnorder.analysis.plots import Target
from bnorder.core.files import writing_to


def figures(comparison: Comparison) -> dict[str, Callable[[Target], Target]]:
    """Each figure the comparison has data for, by file name, drawn into what it is given:
    one list for write_plots' files and plot_pngs' bytes alike."""
    drawn: dict[str, Callable[[Target], Target]] = {
        "test_accuracy.png": lambda to: plots.learning_curves(comparison, to),
        "loss.png": lambda to: plots.losses(comparison, to),
        "final_accuracy.png": lambda to: plots.bars(
            comparison, "final_test_acc", "Final test accuracy", to
        ),
        "gap.png": lambda to: plots.gap_bars(comparison, to),
    }
    if not comparison.shifts.empty:
        drawn["vshift_by_layer.png"] = lambda to: plots.shift_by_layer(comparison, to)
    if "vshift_max" in comparison.epochs and comparison.epochs["vshift_max"].notna().any():
        drawn["vshift_over_epochs.png"] = lambda to: plots.shift_over_epochs(comparison, to)
    if not comparison.pairs.empty:  # the report's lead figure
        drawn["forest.png"] = lambda to: forest_plot(comparison, to)
    if "recalibration_gain_mean" in comparison.summary:
        drawn["recalibration_gain.png"] = lambda to: plots.bars(
            comparison,
            "recalibration_gain",
            "Test accuracy gained by re-calibrating BN with dropout off",
            to,
        )
    return {name: _plain_text(draw) for name, draw in drawn.items()}


def _plain_text(draw: Callable[[Target], Target]) -> Callable[[Target], Target]:
    """``draw`` with every label plain text: names come from run files and folders, and
    matplotlib would parse one with two ``$`` (``cost$\\frac$``) as mathtext, and fail."""

    def plain(to: Target) -> Target:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(to)

    return plain


def write_plots(comparison: Comparison, folder: str | Path) -> list[Path]:
    """The figures as PNG files in ``folder``: four always, the forest plot of the verdicts
    where a comparison was made, the variance shift and BN re-calibration ones where runs
    measured them; returns their paths. PathError where ``folder`` cannot take them."""
    folder = Path(folder)
    with writing_to(folder, "figures"):
        folder.mkdir(parents=True, exist_ok=True)
        return [draw(folder / name) for name, draw in figures(comparison).items()]


def png_bytes(draw: Callable[[Target], Target]) -> bytes:
    """A figure drawn into memory, as PNG bytes (a report embeds them)."""
    buffer = io.BytesIO()
    draw(buffer)
    return buffer.getvalue()


def plot_pngs(comparison: Comparison) -> dict[str, bytes]:
    """The figures write_plots writes, by the same file names, as PNG bytes."""
    return {name: png_bytes(draw) for name, draw in figures(comparison).items()}
