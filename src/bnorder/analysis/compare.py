"""Every run folder below a path, aggregated: one row per scheme (and experiment, grid point)
with its statistics, each scheme tested against a baseline (verdicts.py), the regime the runs
trained in, and the runs left out."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from bnorder.analysis.cells import csv_text
from bnorder.analysis.verdicts import (
    BEST,
    DEFAULT_MARGIN,
    FamilyScope,
    choose_family,
    pairwise,
    rankings,
)
from bnorder.core.errors import BnorderError
from bnorder.core.files import atomic_write_text
from bnorder.data.loaders import batch_count
from bnorder.nets.schemes import unread_keys
from bnorder.runs.folder import (
    SHIFT_FILE,
    declared_baseline,
    declared_margin,
    find_runs,
    find_sweep_config,
    read_experiment_config,
)
from bnorder.runs.metrics import (
    METRIC_TABLE,
    Figure,
    RunMetrics,
    Spread,
    Take,
    grid_columns,
    read_shifts,
)
from bnorder.runs.plan import stored_run_hash
from bnorder.runs.records import RunInfo, Status

SUMMARY_FILE = "summary.csv"
COMPARISONS_FILE = "comparisons.csv"
GROUP = ["experiment", "config", "scheme"]  # config: the hash of everything but scheme and seed
# The control overfits, so that dropout has something to cure, where its eval-mode train
# accuracy ends at least this many points above its test accuracy.
OVERFIT_POINTS = 5.0


class NoRunsError(BnorderError, RuntimeError):
    """The folder holds no run to compare."""


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per completed run, per grid point it is shown at
    epochs: pd.DataFrame  # one row per epoch of every completed run
    shifts: pd.DataFrame  # variance_shift.csv rows of every completed run (empty if none)
    summary: pd.DataFrame  # one row per (experiment, config, scheme), best first
    pairs: pd.DataFrame  # each scheme against the baseline: difference, tests, verdict
    incomplete: pd.DataFrame  # runs left out: experiment, config, scheme, seed, status, error
    problems: list[str]  # files that could not be read, experiments that mix configs
    ranking: list[str] = field(default_factory=list)  # with all pairs: "a ≈ b > c", per family
    unwritten: str | None = None  # why summary.csv and comparisons.csv could not be written
    regime: pd.DataFrame = field(default_factory=pd.DataFrame)  # per experiment: how long, fit
    scope: FamilyScope = FamilyScope.study  # what one Holm family holds


def _experiment(run_path: Path, root: Path) -> str:
    """The output folder a run belongs to, relative to ``root`` ("." for root itself, or when
    ``root`` is a scheme or run folder)."""
    output = run_path.parent.parent
    return str(output.relative_to(root)) if output.is_relative_to(root) else "."


def _study(experiment: str, info: RunInfo) -> str:
    """The sweep a run belongs to: its output folder, or a grid point's grid folder."""
    return str(Path(experiment).parent) if info.grid else experiment


def _steps(info: RunInfo) -> float:
    """SGD steps the run took: its training images in batches (the ragged last one dropped,
    as the loader does), times its epochs; NaN where its record lacks them."""
    train = info.config.get("train") if isinstance(info.config, dict) else None
    batch = train.get("batch_size") if isinstance(train, dict) else None
    if not isinstance(batch, int) or not info.train_images or not isinstance(info.epochs, int):
        return math.nan
    return batch_count(info.train_images, batch, train=True) * info.epochs * 1.0


def _run_labels(info: RunInfo, experiment: str, sweep: dict[str, Any] | None) -> dict[str, Any]:
    """What compare needs to know of a run besides its figures."""
    train = info.config.get("train") if isinstance(info.config, dict) else None
    images = train.get("diagnostics_images", "plain") if isinstance(train, dict) else "plain"
    unread = unread_keys(info.order) & set(info.grid)
    return {
        "study": _study(experiment, info),
        "declared_baseline": declared_baseline(sweep),
        "margin": declared_margin(sweep) or DEFAULT_MARGIN,
        "data_fingerprint": info.data_fingerprint,
        "run_hash": stored_run_hash(info) or info.config_hash,
        "trained_at": experiment,
        "shared_over": ",".join(sorted(unread)),
        "diagnostics_images": images,
        "train_images": info.train_images,
        "steps": _steps(info),
    }


@dataclass
class Collected:
    runs: pd.DataFrame  # final figures, one row per completed run
    epochs: pd.DataFrame  # their metrics, one row per epoch
    shifts: pd.DataFrame  # their variance_shift.csv rows
    incomplete: pd.DataFrame  # runs left out (not completed)
    problems: list[str]  # one message per file that could not be read


def _measured(metrics: RunMetrics, column: str) -> list[float]:
    """A column's values where measured (not NaN); none where the run lacks the column."""
    return [v for v in metrics.columns.get(column, ()) if v == v]


def _last(metrics: RunMetrics, column: str) -> float:
    """The last epoch's value of a column; NaN where absent or not measured."""
    values = metrics.columns.get(column)
    return float(values[-1]) if values else math.nan


TAKES: dict[Take, Callable[[RunMetrics, str], float]] = {
    Take.LAST: _last,
    Take.BEST: lambda metrics, c: float(max(_measured(metrics, c), default=math.nan)),
    Take.MEAN: lambda metrics, c: float(np.mean(v)) if (v := _measured(metrics, c)) else math.nan,
}


def _final_figures(metrics: RunMetrics) -> dict[str, Any]:
    """A completed run's epochs and each figure of the metric table, from its metrics (NaN
    where the run did not measure it): the gap is train − test accuracy both in eval mode,
    ``gap_train_mode`` takes the epoch's running accuracy in train mode instead."""
    figures: dict[str, Any] = {"epochs": int(metrics.columns["epoch"][-1])}
    for figure in METRIC_TABLE.figures:
        value = TAKES[figure.take](metrics, figure.of)
        figures[figure.name] = value - _last(metrics, figure.minus) if figure.minus else value
    return figures


def _stacked(parts: list[dict[str, list[Any]]]) -> pd.DataFrame:
    """Runs' columns as one frame, as ``pd.concat`` of their frames would make it (a column
    a run lacks is NaN in its rows), in a fraction of the time for thousands of runs."""
    names = list(dict.fromkeys(name for part in parts for name in part))
    lengths = [len(next(iter(part.values()))) for part in parts]
    return pd.DataFrame(
        {
            name: [v for part, n in zip(parts, lengths, strict=True)
                   for v in part.get(name, [math.nan] * n)]
            for name in names
        }
    )  # fmt: skip


def _apart_by_data(runs: pd.DataFrame) -> pd.DataFrame:
    """Where runs of one config trained on different data (their fingerprints differ), their
    config column names the data too: they are shown apart, never averaged together."""
    if runs.empty:
        return runs
    fingerprints = runs["data_fingerprint"].where(runs["data_fingerprint"] != "")
    mixed = fingerprints.groupby(runs["config"]).transform("nunique") > 1
    labelled = runs["config"] + "/data " + runs["data_fingerprint"].str[:8].replace("", "?")
    return runs.assign(config=runs["config"].where(~mixed, labelled))


def collect_runs(root: str | Path) -> Collected:
    """Every run below ``root``: the completed ones' figures, curves and variance shifts, the
    others' status, and the files that could not be read. A run that grid points share (its
    scheme reads none of the keys that tell them apart) is shown at each of them."""
    root = Path(root)
    records, problems = find_runs(root)
    rows, curves, shifts, left_out = [], [], [], []
    sweeps: dict[Path, dict[str, Any] | None] = {}  # output folder → its sweep's config.yaml
    read = functools.cache(read_experiment_config)  # a grid's config: once, not per point
    for record in records:
        info = record.info
        output = record.path.parent.parent
        if output not in sweeps:
            sweeps[output] = find_sweep_config(output, read)
        base = {
            "experiment": _experiment(record.path, root),
            "config": info.experiment_hash,
            "scheme": info.scheme,
            "seed": info.seed,
            **info.grid,  # a grid run's values, as columns
        }
        if info.status is not Status.COMPLETED:
            left_out.append({**base, "status": info.status.value, "error": info.error or ""})
            continue
        metrics = record.metrics
        if metrics is None:
            continue  # reported by find_runs
        n = len(metrics)
        where = {"experiment": [base["experiment"]] * n, "config": [base["config"]] * n}
        curves.append(metrics.columns | where)
        shift_file = record.path / SHIFT_FILE
        if shift_file.exists():
            try:
                shifts.append(read_shifts(shift_file).assign(**base))
            except (OSError, ValueError) as err:
                problems.append(f"{shift_file}: unreadable ({err})")
        labels = _run_labels(info, base["experiment"], sweeps[output])
        rows.append({**base, **labels, **_final_figures(metrics)})
    runs = _apart_by_data(pd.DataFrame(rows))
    epochs = _stacked(curves) if curves else pd.DataFrame()
    shifts_frame = pd.concat(shifts, ignore_index=True) if shifts else pd.DataFrame()
    copies = shared_copies(runs)
    return Collected(
        runs=_with_copies(runs, copies),
        epochs=_with_copies(epochs, copies),
        shifts=_with_copies(shifts_frame, copies),
        incomplete=pd.DataFrame(left_out, columns=[*GROUP, "seed", "status", "error"]),
        problems=problems,
    )


def shared_copies(runs: pd.DataFrame) -> list[tuple[tuple[str, str, int], dict[str, Any]]]:
    """Where each run shared by grid points is shown besides where it trained: (its
    experiment, scheme and seed; the labels of a grid point of its study that agrees with it
    on every grid key its scheme reads and holds no run of that scheme and seed)."""
    if runs.empty or not (runs["shared_over"] != "").any():
        return []
    grid = grid_columns(runs)
    points = runs.drop_duplicates(["experiment", "config"])[
        ["study", "experiment", "config", *grid]
    ]
    held = set(zip(runs["experiment"], runs["scheme"], runs["seed"], strict=True))
    copies = []
    for run in runs[runs["shared_over"] != ""].to_dict("records"):
        over = set(run["shared_over"].split(","))
        for point in points[points["study"] == run["study"]].to_dict("records"):
            agrees = all(_same(point[k], run[k]) for k in grid if k not in over)
            if agrees and (point["experiment"], run["scheme"], run["seed"]) not in held:
                source = (run["experiment"], run["scheme"], run["seed"])
                copies.append((source, {k: point[k] for k in ("experiment", "config", *grid)}))
    return copies


def _same(a: Any, b: Any) -> bool:
    return a == b or (pd.isna(a) and pd.isna(b))


def _with_copies(
    frame: pd.DataFrame, copies: list[tuple[tuple[str, str, int], dict[str, Any]]]
) -> pd.DataFrame:
    """``frame`` (runs, curves or shifts) with the rows of each shared run repeated under the
    labels of every grid point that shows it (``shared_copies``)."""
    if frame.empty or not copies:
        return frame
    keys = list(zip(frame["experiment"], frame["scheme"], frame["seed"], strict=True))
    added = []
    for source, labels in copies:
        rows = frame[[key == source for key in keys]]
        added.append(rows.assign(**{k: v for k, v in labels.items() if k in frame}))
    return pd.concat([frame, *added], ignore_index=True)


def _present(values: pd.Series) -> np.ndarray:
    """A sample's values as floats, the missing (a diagnostic a run did not measure) left out."""
    array = values.to_numpy(dtype=float)
    return array[~np.isnan(array)]


def _t_interval(array: np.ndarray, level: float) -> tuple[float, float]:
    """The Student-t confidence interval for the mean (NaN where n < 2: one run shows no
    spread; the mean itself where every value is the same)."""
    n = len(array)
    if n < 2:
        return math.nan, math.nan
    mean, std = float(array.mean()), float(array.std(ddof=1))
    half = float(special.stdtrit(n - 1, (1 + level) / 2)) * std / math.sqrt(n) if std > 0 else 0
    return mean - half, mean + half


def sample_stats(values: pd.Series, prefix: str, level: float = 0.95) -> dict[str, float]:
    """n-aware description of one sample: mean, std, median and a Student-t confidence
    interval for the mean (NaN where n < 2). Missing values are left out."""
    return _described(_present(values), prefix, level)


def _described(array: np.ndarray, prefix: str, level: float) -> dict[str, float]:
    """``sample_stats`` of an array: numpy, not pandas, as a summary of thousands of runs
    makes thousands of these."""
    low, high = _t_interval(array, level)
    return {
        f"{prefix}_mean": float(array.mean()) if len(array) else math.nan,
        f"{prefix}_std": float(array.std(ddof=1)) if len(array) > 1 else math.nan,
        f"{prefix}_median": float(np.median(array)) if len(array) else math.nan,
        f"{prefix}_ci_low": low,
        f"{prefix}_ci_high": high,
    }


def ratio_stats(values: pd.Series, prefix: str, level: float = 0.95) -> dict[str, float]:
    """``sample_stats`` of a ratio, taken on the log scale and brought back: the geometric
    mean (``_gmean``), the geometric SD (``_gsd``, a factor), the median and a CI for the
    geometric mean that, unlike a t interval on the ratios, never reaches below zero."""
    ratios = _present(values)
    logged = _described(np.log(ratios), prefix, level)
    return {
        f"{prefix}_gmean": math.exp(logged[f"{prefix}_mean"]),
        f"{prefix}_gsd": math.exp(logged[f"{prefix}_std"]),
        f"{prefix}_median": float(np.median(ratios)) if len(ratios) else math.nan,
        f"{prefix}_ci_low": math.exp(logged[f"{prefix}_ci_low"]),
        f"{prefix}_ci_high": math.exp(logged[f"{prefix}_ci_high"]),
    }


STATISTICS = {Spread.T: sample_stats, Spread.LOG: ratio_stats}
CENTRES = {Spread.T: "mean", Spread.LOG: "gmean", Spread.NONE: "mean"}


def centre(figure: Figure) -> str:
    """The summary's column of a figure's mean (geometric, where taken on the log scale)."""
    return f"{figure.name}_{CENTRES[figure.spread]}"


def _summarised(runs: pd.DataFrame) -> tuple[list[Figure], list[Figure]]:
    """The figures the summary describes (some run has them, or always), in summary.csv's
    order: those with a spread, then those given as a mean only."""
    figures = [
        f
        for f in METRIC_TABLE.figures
        if f.always or (f.name in runs and runs[f.name].notna().any())
    ]
    means = [f for f in figures if f.spread is Spread.NONE]
    return [f for f in figures if f not in means], means


def summarise(runs: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (experiment, config, scheme): run count, and for each figure of the metric
    table its statistics (``Spread``: mean, std, median and 95% CI, or the mean only), where
    some run has it or always; sorted by final test accuracy. ``incomplete`` counts, per
    group, the runs left out; a group with none completed has 0 runs and empty figures."""
    described, means = _summarised(runs)
    rows = []
    for key, group in runs.groupby(GROUP, sort=False):
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        for column in grid_columns(runs):
            row[column] = group[column].iloc[0]
        for column in ("shared_over", "diagnostics_images"):  # how to read its figures
            row[column] = group[column].iloc[0] if column in group else ""
        row["runs"] = len(group)
        row["epochs"] = int(group["epochs"].max())
        for figure in described:
            row.update(STATISTICS[figure.spread](group[figure.name], figure.name))
        for figure in means:
            row[centre(figure)] = float(group[figure.name].mean())
        rows.append(row)
    summary = pd.DataFrame(rows)
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


def _baselines_missing(runs: pd.DataFrame, baseline: str | None) -> list[str]:
    """One message per experiment whose baseline (named, or declared) has no completed run:
    its schemes are not compared, rather than compared against one the data chose."""
    messages = []
    for (experiment, _), block in runs.groupby(["experiment", "config"], sort=False):
        family = choose_family(block, baseline, all_pairs=False)
        if family.baseline is not None and family.baseline not in set(block["scheme"]):
            how = "given" if baseline else "declared"
            messages.append(
                f"{experiment}: the {how} baseline {family.baseline} has no completed runs, so "
                "nothing there is compared (name another with --baseline, or use --pairs all)"
            )
    return messages


def regime(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Per experiment: how long its runs trained (epochs, SGD steps, images seen) and whether
    its control overfits: the control's eval-mode train accuracy, its train − test gap in
    points, and ``overfits`` where that gap is at least ``OVERFIT_POINTS``. No control (every
    pair compared): no gap judged."""
    rows = []
    for (experiment, config), block in runs.groupby(["experiment", "config"], sort=False):
        control = choose_family(block, baseline, all_pairs=False).baseline
        ours = block[block["scheme"] == control]
        train, gap = (
            ours[c].mean() * 100 if len(ours) else math.nan for c in ("final_train_eval_acc", "gap")
        )
        rows.append(
            {"study": block["study"].iloc[0], "experiment": experiment, "config": config,
             **{c: block[c].iloc[0] for c in grid_columns(block)},
             "epochs": int(block["epochs"].max()), "steps": block["steps"].max(),
             "train_images": block["train_images"].max(), "control": control,
             "control_train_eval_acc": train, "control_gap_points": gap,
             "overfits": bool(gap >= OVERFIT_POINTS) if not math.isnan(gap) else None}
        )  # fmt: skip
    return pd.DataFrame(rows)


def regime_line(row: Any) -> str:
    """A ``regime`` row in words, saying plainly when the study cannot show dropout's benefit."""
    steps = "" if math.isnan(row.steps) else f", {row.steps:,.0f} SGD steps"
    images = "" if pd.isna(row.train_images) else f" on {row.train_images:,.0f} training images"
    line = f"{row.epochs} epochs{steps}{images}"
    if row.overfits is None:
        return line + ("; the control measured no eval-mode train accuracy" if row.control else "")
    line += (
        f"; the control {row.control} ends at {row.control_train_eval_acc:.1f} % on training "
        f"images in eval mode, a train − test gap of {row.control_gap_points:+.1f} points"
    )
    if row.overfits:
        return line + f": it overfits (gap ≥ {OVERFIT_POINTS:g}), so dropout had something to cure"
    return (
        line + f": under {OVERFIT_POINTS:g}, it does not overfit, so this study can show "
        "dropout's cost but not its benefit"
    )


def compare(
    root: str | Path,
    *,
    baseline: str | None = None,
    all_pairs: bool = False,
    scope: FamilyScope = FamilyScope.study,
    write: bool = True,
) -> Comparison:
    """Summarise every run below ``root`` and test each scheme against the baseline its config
    declared, or ``baseline`` (``best``: every pair, exploratory); with ``all_pairs`` every pair
    of schemes; on both accuracies where runs re-calibrated BN, Holm over each ``scope``
    family; rank them where every pair was tested. Write ``root/summary.csv`` and
    ``root/comparisons.csv`` unless ``write`` is off."""
    root = Path(root)
    if not root.is_dir():
        raise NoRunsError(f"{root}: no such folder")
    collected = collect_runs(root)
    runs, incomplete, problems = collected.runs, collected.incomplete, collected.problems
    if runs.empty:
        detail = f"; {len(incomplete)} incomplete" if len(incomplete) else ""
        raise NoRunsError(f"{root}: no completed runs found (looked for */seed*/run.json{detail})")
    summary = summarise(runs, incomplete)
    if baseline not in (None, BEST) and baseline not in set(runs["scheme"]):
        raise NoRunsError(
            f"--baseline {baseline}: no completed runs of that scheme "
            f"(have: {', '.join(sorted(set(runs['scheme'])))})"
        )
    pairs = pairwise(runs, baseline, all_pairs=all_pairs, scope=scope)
    if not all_pairs:
        problems += _baselines_missing(runs, baseline)
    for experiment, configs in runs.groupby("experiment")["config"].nunique().items():
        if configs > 1:
            problems.append(
                f"{root / experiment}: runs of {configs} different configs, shown apart "
                "(column config)"
            )
    comparison = Comparison(
        runs, collected.epochs, collected.shifts, summary, pairs, incomplete, problems,
        rankings(runs, pairs) if len(pairs) else [], regime=regime(runs, baseline), scope=scope,
    )  # fmt: skip
    if write:
        try:
            atomic_write_text(root / SUMMARY_FILE, csv_text(summary))
            atomic_write_text(root / COMPARISONS_FILE, csv_text(pairs))
        except OSError as err:  # a read-only folder, a full disk: the figures still stand
            comparison.unwritten = f"{err.filename or root}: {err.strerror or err}"
    return comparison
