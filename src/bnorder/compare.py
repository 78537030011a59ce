"""Aggregating run folders into one row per scheme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bnorder.results import find_runs, write_text

SUMMARY_FILE = "summary.csv"
GROUP = ["experiment", "config", "scheme"]  # config: the hash of everything but scheme and seed


class NoRunsError(RuntimeError):
    """The folder holds no run to compare."""


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per completed run
    summary: pd.DataFrame  # one row per (experiment, config, scheme), best first
    incomplete: pd.DataFrame  # runs left out: experiment, config, scheme, seed, status, error
    problems: list[str]  # files that could not be read, experiments that mix configs


def _experiment(run_path: Path, root: Path) -> str:
    """The output folder a run belongs to, relative to ``root`` ("." for root itself, or when
    ``root`` is a scheme or run folder)."""
    output = run_path.parent.parent
    return str(output.relative_to(root)) if output.is_relative_to(root) else "."


def collect_runs(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Final figures of every completed run below ``root``, the runs left out (not completed),
    and one message per file that could not be read."""
    root = Path(root)
    records, problems = find_runs(root)
    rows, left_out = [], []
    for record in records:
        info = record.info
        base = {
            "experiment": _experiment(record.path, root),
            "config": info.get("experiment_hash", ""),
            "scheme": info["scheme"],
            "seed": info["seed"],
        }
        if info["status"] != "completed":
            left_out.append({**base, "status": info["status"], "error": info.get("error") or ""})
            continue
        metrics = record.metrics
        if metrics is None:
            continue  # reported by find_runs
        last = metrics.iloc[-1]
        rows.append(
            {
                **base,
                "epochs": int(last["epoch"]),
                "final_test_acc": float(last["test_acc"]),
                "best_test_acc": float(metrics["test_acc"].max()),
                "final_train_acc": float(last["train_acc"]),
                "gap": float(last["train_acc"] - last["test_acc"]),
                "epoch_seconds": float(metrics["epoch_seconds"].mean()),
                "images_per_second": float(metrics["images_per_second"].mean()),
            }
        )
    incomplete = pd.DataFrame(left_out, columns=[*GROUP, "seed", "status", "error"])
    return pd.DataFrame(rows), incomplete, problems


def summarise(runs: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (experiment, config, scheme): run count, means and standard deviations,
    sorted by final test accuracy. The std of a single run is NaN, not zero: there is no
    spread to see. ``incomplete`` counts, per group, the runs left out; a group with none
    completed has 0 runs and empty figures."""
    summary = (
        runs.groupby(GROUP, sort=False)
        .agg(
            runs=("seed", "size"),
            epochs=("epochs", "max"),
            final_test_acc_mean=("final_test_acc", "mean"),
            final_test_acc_std=("final_test_acc", "std"),
            best_test_acc_mean=("best_test_acc", "mean"),
            final_train_acc_mean=("final_train_acc", "mean"),
            gap_mean=("gap", "mean"),
            epoch_seconds_mean=("epoch_seconds", "mean"),
            images_per_second_mean=("images_per_second", "mean"),
        )
        .reset_index()
    )
    if incomplete is None:
        incomplete = pd.DataFrame(columns=GROUP)
    counts = incomplete.groupby(GROUP).size().rename("incomplete").reset_index()
    # outer: a scheme whose every run failed still gets its row, with 0 runs
    summary = summary.merge(counts, on=GROUP, how="outer")
    summary[["runs", "incomplete"]] = summary[["runs", "incomplete"]].fillna(0).astype(int)
    summary.insert(summary.columns.get_loc("runs") + 1, "incomplete", summary.pop("incomplete"))
    return summary.sort_values(
        ["experiment", "final_test_acc_mean"],
        ascending=[True, False],
        na_position="last",
        ignore_index=True,
    )


def compare(root: str | Path, *, write: bool = True) -> Comparison:
    """Summarise every run below ``root``; write ``root/summary.csv`` unless ``write`` is off."""
    root = Path(root)
    if not root.is_dir():
        raise NoRunsError(f"{root}: no such folder")
    runs, incomplete, problems = collect_runs(root)
    if runs.empty:
        detail = f"; {len(incomplete)} incomplete" if len(incomplete) else ""
        raise NoRunsError(f"{root}: no completed runs found (looked for */seed*/run.json{detail})")
    summary = summarise(runs, incomplete)
    for experiment, configs in runs.groupby("experiment")["config"].nunique().items():
        if configs > 1:
            problems.append(
                f"{root / experiment}: runs of {configs} different configs, shown apart "
                "(column config)"
            )
    if write:
        write_text(root / SUMMARY_FILE, summary.to_csv(index=False))
    return Comparison(runs, summary, incomplete, problems)
