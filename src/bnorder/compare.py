"""Aggregating run folders into one row per scheme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnorder.results import find_runs, write_text

SUMMARY_FILE = "summary.csv"


class NoRunsError(RuntimeError):
    """The folder holds no run to compare."""


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per completed run
    summary: pd.DataFrame  # one row per (experiment, scheme), best first
    incomplete: list[str]  # "experiment/scheme/seedK: status (detail)" for runs left out
    problems: list[str]  # files that could not be read


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Final figures of every completed run below ``root``; other runs are named, not used."""
    root = Path(root)
    records, problems = find_runs(root)
    rows, incomplete = [], []
    for record in records:
        experiment = str(record.path.parent.parent.relative_to(root))
        info = record.info
        label = f"{record.path.relative_to(root)}"
        if info["status"] != "completed":
            incomplete.append(
                f"{label}: {info['status']}" + (f" ({info['error']})" if info.get("error") else "")
            )
            continue
        metrics = record.metrics
        if metrics is None or metrics.empty:
            continue  # reported by find_runs
        last = metrics.iloc[-1]
        rows.append(
            {
                "experiment": experiment,
                "scheme": info["scheme"],
                "seed": info["seed"],
                "epochs": int(last["epoch"]),
                "final_test_acc": float(last["test_acc"]),
                "best_test_acc": float(metrics["test_acc"].max()),
                "final_train_acc": float(last["train_acc"]),
                "gap": float(last["train_acc"] - last["test_acc"]),
                "epoch_seconds": float(metrics["epoch_seconds"].mean()),
                "images_per_second": float(metrics["images_per_second"].mean()),
            }
        )
    return pd.DataFrame(rows), incomplete, problems


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, scheme): run count, means and standard deviations, sorted by
    final test accuracy. The std of a single run is NaN, not zero: there is no spread to see."""
    grouped = runs.groupby(["experiment", "scheme"], sort=False)
    summary = grouped.agg(
        runs=("seed", "size"),
        epochs=("epochs", "max"),
        final_test_acc_mean=("final_test_acc", "mean"),
        final_test_acc_std=("final_test_acc", "std"),
        best_test_acc_mean=("best_test_acc", "mean"),
        final_train_acc_mean=("final_train_acc", "mean"),
        gap_mean=("gap", "mean"),
        epoch_seconds_mean=("epoch_seconds", "mean"),
        images_per_second_mean=("images_per_second", "mean"),
    ).reset_index()
    return summary.sort_values(
        ["experiment", "final_test_acc_mean"], ascending=[True, False], ignore_index=True
    )


def compare(root: str | Path, *, write: bool = True) -> Comparison:
    """Summarise every run below ``root``; write ``root/summary.csv`` unless ``write`` is off."""
    root = Path(root)
    if not root.is_dir():
        raise NoRunsError(f"{root}: no such folder")
    runs, incomplete, problems = collect_runs(root)
    if runs.empty:
        detail = f"; {len(incomplete)} incomplete" if incomplete else ""
        raise NoRunsError(f"{root}: no completed runs found (looked for */seed*/run.json{detail})")
    summary = summarise(runs)
    if write:
        write_text(root / SUMMARY_FILE, summary.to_csv(index=False))
    return Comparison(runs, summary, incomplete, problems)
