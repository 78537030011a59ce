"""Figures from a comparison: what a reader should look at rather than read.

Matplotlib Figure objects rendered by Agg straight to PNG: no pyplot, no display, no global
state. One group is one (experiment,
config, scheme); bands and error bars are 95% Student-t confidence intervals over seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from bnorder.compare import GROUP, Comparison

CI_NOTE = "shaded: 95% CI of the mean over seeds (Student t)"


def _label(key: tuple, several: bool) -> str:
    experiment, config, scheme = key
    return f"{experiment}/{scheme} [{config}]" if several else scheme


def _mean_ci(values: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: mean, and the half-width of its 95% t interval (0 with a single seed)."""
    grouped = values.groupby("epoch")
    out = grouped.mean()
    n = grouped.count()
    sem = grouped.std(ddof=1) / n**0.5
    t = n.map(lambda k: stats.t.ppf(0.975, k - 1) if k > 1 else 0.0)
    return out.join((sem * t).fillna(0.0).add_suffix("_ci"))


def learning_curves(comparison: Comparison, path: Path) -> Path:
    epochs, several = comparison.epochs, _several(comparison)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for key, group in epochs.groupby(GROUP, sort=False):
        curve = _mean_ci(group[["epoch", "test_acc"]])
        line = ax.plot(curve.index, curve["test_acc"] * 100, label=_label(key, several))[0]
        low = (curve["test_acc"] - curve["test_acc_ci"]) * 100
        high = (curve["test_acc"] + curve["test_acc_ci"]) * 100
        ax.fill_between(curve.index, low, high, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.set_title(f"Test accuracy per epoch\n{CI_NOTE}", fontsize=10)
    return _save(fig, ax, path)


def losses(comparison: Comparison, path: Path) -> Path:
    """Train (solid) and test (dashed) loss per group on one figure: dropout before BN shows as
    a test loss that rises while the train loss falls."""
    epochs, several = comparison.epochs, _several(comparison)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for key, group in epochs.groupby(GROUP, sort=False):
        curve = group.groupby("epoch")[["train_loss", "test_loss"]].mean()
        line = ax.plot(curve.index, curve["train_loss"], label=f"{_label(key, several)} train")[0]
        ax.plot(
            curve.index,
            curve["test_loss"],
            "--",
            color=line.get_color(),
            label=f"{_label(key, several)} test",
        )
    ax.set(
        xlabel="epoch",
        ylabel="cross-entropy (mean over seeds)",
        title="Train (solid) and test (dashed) loss",
    )
    return _save(fig, ax, path)


def _bars(comparison: Comparison, column: str, ylabel: str, title: str, path: Path) -> Path:
    summary = comparison.summary.dropna(subset=[f"{column}_mean"])
    several = _several(comparison)
    labels = [_label(tuple(k), several) for k in summary[GROUP].itertuples(index=False)]
    mean = summary[f"{column}_mean"] * 100
    low = (summary[f"{column}_mean"] - summary[f"{column}_ci_low"]).fillna(0) * 100
    high = (summary[f"{column}_ci_high"] - summary[f"{column}_mean"]).fillna(0) * 100
    fig = Figure(figsize=(max(5, 1.1 * len(labels) + 2), 4.5))
    ax = fig.subplots()
    ax.bar(labels, mean, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.8)
    for x, (value, n) in enumerate(zip(mean, summary["runs"], strict=True)):
        ax.annotate(
            f"{value:.1f}\nn={n}",
            (x, value / 2),
            ha="center",
            va="center",
            fontsize=8,
            color="white",
        )
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\nerror bars: 95% CI over seeds (none where n = 1)", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _several(comparison: Comparison) -> bool:
    return comparison.summary[["experiment", "config"]].drop_duplicates().shape[0] > 1


def _save(fig: Figure, ax: Axes, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_plots(comparison: Comparison, folder: str | Path) -> list[Path]:
    """The four figures as PNG files in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        learning_curves(comparison, folder / "test_accuracy.png"),
        losses(comparison, folder / "loss.png"),
        _bars(
            comparison,
            "final_test_acc",
            "final test accuracy (%)",
            "Final test accuracy",
            folder / "final_accuracy.png",
        ),
        _bars(
            comparison,
            "gap",
            "train − test accuracy (points)",
            "Generalisation gap",
            folder / "gap.png",
        ),
    ]
