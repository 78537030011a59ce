"""Every run folder below a path, aggregated: one row per scheme (and experiment, grid point)
with its statistics, each scheme tested against a baseline, and the runs left out."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from bnorder.files import atomic_write_text
from bnorder.results import SHIFT_FILE, Status, find_declared_baseline, find_runs, read_shifts

SUMMARY_FILE = "summary.csv"
COMPARISONS_FILE = "comparisons.csv"
GROUP = ["experiment", "config", "scheme"]  # config: the hash of everything but scheme and seed
BEST = "best"  # --baseline best: the baseline chosen from the data, so every pair is tested
EXPLORATORY = "exploratory: "  # the mark of every verdict whose family was chosen from the data


class Pairs(str, Enum):
    """Which comparisons compare makes: each scheme against the baseline, or every pair."""

    baseline = "baseline"
    all = "all"


class NoRunsError(RuntimeError):
    """The folder holds no run to compare."""


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per completed run
    epochs: pd.DataFrame  # one row per epoch of every completed run
    shifts: pd.DataFrame  # variance_shift.csv rows of every completed run (empty if none)
    summary: pd.DataFrame  # one row per (experiment, config, scheme), best first
    pairs: pd.DataFrame  # each scheme against the baseline: difference, tests, verdict
    incomplete: pd.DataFrame  # runs left out: experiment, config, scheme, seed, status, error
    problems: list[str]  # files that could not be read, experiments that mix configs
    ranking: list[str] = field(default_factory=list)  # with all pairs: "a ≈ b > c", per family
    unwritten: str | None = None  # why summary.csv and comparisons.csv could not be written


def _experiment(run_path: Path, root: Path) -> str:
    """The output folder a run belongs to, relative to ``root`` ("." for root itself, or when
    ``root`` is a scheme or run folder)."""
    output = run_path.parent.parent
    return str(output.relative_to(root)) if output.is_relative_to(root) else "."


@dataclass
class Collected:
    runs: pd.DataFrame  # final figures, one row per completed run
    epochs: pd.DataFrame  # their metrics, one row per epoch
    shifts: pd.DataFrame  # their variance_shift.csv rows
    incomplete: pd.DataFrame  # runs left out (not completed)
    problems: list[str]  # one message per file that could not be read


def _final(metrics: pd.DataFrame, column: str) -> float:
    """The last row's value of a diagnostic column; NaN where absent or not measured."""
    return float(metrics[column].iloc[-1]) if column in metrics.columns else math.nan


def _final_figures(metrics: pd.DataFrame) -> dict[str, Any]:
    """A completed run's figures, from its metrics: the last epoch's, the best, the means. The
    gap is train − test accuracy both in eval mode (NaN where the run did not measure the
    former); ``gap_train_mode`` takes the epoch's running accuracy in train mode instead."""
    last = metrics.iloc[-1]
    recalibrated = _final(metrics, "test_acc_recalibrated")
    train_eval = _final(metrics, "train_eval_acc")
    return {
        "epochs": int(last["epoch"]),
        "final_test_acc": float(last["test_acc"]),
        "best_test_acc": float(metrics["test_acc"].max()),
        "final_train_acc": float(last["train_acc"]),
        "final_train_eval_acc": train_eval,
        "gap": train_eval - float(last["test_acc"]),
        "gap_train_mode": float(last["train_acc"] - last["test_acc"]),
        "vshift_max": _final(metrics, "vshift_max"),
        "vshift_mean": _final(metrics, "vshift_mean"),
        "test_acc_recalibrated": recalibrated,
        "recalibration_gain": recalibrated - float(last["test_acc"]),
        "epoch_seconds": float(metrics["epoch_seconds"].mean()),
        "images_per_second": float(metrics["images_per_second"].mean()),
    }


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
    others' status, and the files that could not be read."""
    root = Path(root)
    records, problems = find_runs(root)
    rows, curves, shifts, left_out = [], [], [], []
    declared: dict[Path, str | None] = {}  # sweep output folder → its declared baseline
    for record in records:
        info = record.info
        output = record.path.parent.parent
        if output not in declared:
            declared[output] = find_declared_baseline(output)
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
        curves.append(metrics.assign(experiment=base["experiment"], config=base["config"]))
        shift_file = record.path / SHIFT_FILE
        if shift_file.exists():
            try:
                shifts.append(read_shifts(shift_file).assign(**base))
            except (OSError, ValueError) as err:
                problems.append(f"{shift_file}: unreadable ({err})")
        rows.append(
            {
                **base,
                "declared_baseline": declared[output],
                "data_fingerprint": info.data_fingerprint,
                **_final_figures(metrics),
            }
        )
    return Collected(
        runs=_apart_by_data(pd.DataFrame(rows)),
        epochs=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        shifts=pd.concat(shifts, ignore_index=True) if shifts else pd.DataFrame(),
        incomplete=pd.DataFrame(left_out, columns=[*GROUP, "seed", "status", "error"]),
        problems=problems,
    )


def sample_stats(values: pd.Series, prefix: str, level: float = 0.95) -> dict[str, float]:
    """n-aware description of one sample: mean, std, median and a Student-t confidence
    interval for the mean (NaN where n < 2: one run shows no spread). Missing values (a
    diagnostic a run did not measure) are left out."""
    values = values.dropna()
    n = len(values)
    mean, std = float(values.mean()), float(values.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and std > 0:
        low, high = stats.t.interval(level, n - 1, loc=mean, scale=std / math.sqrt(n))
    elif n > 1:
        low = high = mean
    else:
        low = high = math.nan
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_std": std,
        f"{prefix}_median": float(values.median()),
        f"{prefix}_ci_low": float(low),
        f"{prefix}_ci_high": float(high),
    }


# with mean, std, median and CI
DESCRIBED = ["final_test_acc", "best_test_acc", "gap_train_mode"]
# the same, where some run measured them (eval-mode gap, variance shift, BN re-calibration)
DIAGNOSTICS = ["gap", "vshift_max", "vshift_mean", "test_acc_recalibrated", "recalibration_gain"]
MEANS = ["final_train_acc", "final_train_eval_acc", "epoch_seconds", "images_per_second"]
RATIOS = ["vshift_max", "vshift_mean"]  # ≥ 1, spread multiplicatively: described on log scale


def ratio_stats(values: pd.Series, prefix: str, level: float = 0.95) -> dict[str, float]:
    """``sample_stats`` of a ratio, taken on the log scale and brought back: the geometric
    mean (``_gmean``), the geometric SD (``_gsd``, a factor), the median and a CI for the
    geometric mean that, unlike a t interval on the ratios, never reaches below zero."""
    logged = sample_stats(np.log(values.dropna()), prefix, level)
    return {
        f"{prefix}_gmean": math.exp(logged[f"{prefix}_mean"]),
        f"{prefix}_gsd": math.exp(logged[f"{prefix}_std"]),
        f"{prefix}_median": float(values.median()),
        f"{prefix}_ci_low": math.exp(logged[f"{prefix}_ci_low"]),
        f"{prefix}_ci_high": math.exp(logged[f"{prefix}_ci_high"]),
    }


def summarise(runs: pd.DataFrame, incomplete: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (experiment, config, scheme): run count, and for final and best test
    accuracy and the train − test gap their mean, std, median and 95% CI; sorted by final
    test accuracy. The same for the diagnostics that some run has. ``incomplete`` counts,
    per group, the runs left out; a group with none completed has 0 runs and empty figures."""
    described = DESCRIBED + [c for c in DIAGNOSTICS if c in runs and runs[c].notna().any()]
    rows = []
    for key, group in runs.groupby(GROUP, sort=False):
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        for column in grid_columns(runs):
            row[column] = group[column].iloc[0]
        row["runs"] = len(group)
        row["epochs"] = int(group["epochs"].max())
        for metric in described:
            describe = ratio_stats if metric in RATIOS else sample_stats
            row.update(describe(group[metric], metric))
        for metric in MEANS:
            row[f"{metric}_mean"] = float(group[metric].mean())
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


def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The grid's dotted keys among a frame's columns (``model.dropout``…)."""
    return [c for c in frame.columns if "." in c]


def holm(p_values: pd.Series) -> pd.Series:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count)."""
    valid = p_values.dropna().sort_values()
    m = len(valid)
    adjusted = (valid * (m - pd.Series(range(m), index=valid.index))).clip(upper=1).cummax()
    return adjusted.reindex(p_values.index)


# The test column where every seed's paired difference is the same: no t-test is defined.
CONSTANT_DIFFERENCE = "none: constant paired difference"


@dataclass(frozen=True)
class _PairedT:
    """The paired t-test on same-seed differences: a one-sample t-test of their mean against
    0, by its textbook formula (checked against ``scipy.stats.ttest_rel`` in the tests; a
    tenth of its time, which the null simulation's thousands of comparisons need)."""

    p: float
    low: float
    high: float

    @classmethod
    def of(cls, differences: np.ndarray, level: float) -> _PairedT:
        df = len(differences) - 1
        mean, se = differences.mean(), differences.std(ddof=1) / math.sqrt(len(differences))
        half = special.stdtrit(df, (1 + level) / 2) * se
        return cls(float(2 * special.stdtr(df, -abs(mean / se))), mean - half, mean + half)


def _tests(
    base: np.ndarray, other: np.ndarray, paired: tuple[np.ndarray, np.ndarray] | None, level: float
) -> dict[str, Any]:
    """Welch's t-test, and the paired t-test where every run has its same-seed partner
    (``paired``: both groups in seed order; it removes each seed's own luck, so it is the one
    the verdict uses), with the paired effect size d_z (mean difference over the SD of the
    differences). Where the paired differences are all equal, no test: the t statistic is
    undefined, and Welch's would answer another question."""
    with warnings.catch_warnings():
        # scipy warns when one group's values are all equal; the tests still hold then
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        if paired is None:  # Welch's is the verdict's test: its CI too
            welch = stats.ttest_ind(other, base, equal_var=False)
        else:  # only its p: from the groups' moments, in a tenth of ttest_ind's time
            moments = [(g.mean(), g.std(ddof=1), len(g)) for g in (other, base)]
            welch = stats.ttest_ind_from_stats(*moments[0], *moments[1], equal_var=False)
    row: dict[str, Any] = {"p_welch": float(welch.pvalue)}
    if paired is not None:
        differences = paired[1] - paired[0]
        if differences.std(ddof=1) <= 1e-12:
            return {**row, "test": CONSTANT_DIFFERENCE}
    pooled = math.sqrt(
        ((len(base) - 1) * base.var(ddof=1) + (len(other) - 1) * other.var(ddof=1))
        / (len(base) + len(other) - 2)
    )
    row["cohens_d"] = (other.mean() - base.mean()) / pooled if pooled > 0 else math.nan
    if paired is None:
        ci = welch.confidence_interval(level)
        row.update(test="Welch t", p=row["p_welch"], diff_ci_low=ci.low, diff_ci_high=ci.high)
    else:
        rel = _PairedT.of(differences, level)
        row.update(test="paired t", p=rel.p, p_paired=rel.p, diff_ci_low=rel.low)
        row.update(diff_ci_high=rel.high, cohens_dz=differences.mean() / differences.std(ddof=1))
    row["diff_ci_low"], row["diff_ci_high"] = row["diff_ci_low"] * 100, row["diff_ci_high"] * 100
    return row


def _compare_pair(base: pd.Series, other: pd.Series, level: float) -> dict[str, Any]:
    """Final test accuracies of two groups (indexed by seed): the difference and its tests,
    paired where every run has its same-seed partner, else Welch's on all runs."""
    shared = base.index.intersection(other.index)
    b, o = base.to_numpy(dtype=float), other.to_numpy(dtype=float)
    row: dict[str, Any] = {
        "n_baseline": len(b),
        "n": len(o),
        "n_paired": len(shared),
        "diff_points": (o.mean() - b.mean()) * 100,
        "test": "",
        "p": math.nan,
        "diff_ci_low": math.nan,
        "diff_ci_high": math.nan,
        "cohens_d": math.nan,
        "cohens_dz": math.nan,
    }
    if len(b) >= 2 and len(o) >= 2 and b.std(ddof=1) + o.std(ddof=1) > 1e-12:
        complete = len(shared) == len(b) == len(o)
        in_order = (base.sort_index().to_numpy(float), other.sort_index().to_numpy(float))
        paired = in_order if complete else None
        row.update(_tests(b, o, paired, level))
    return row


@dataclass(frozen=True)
class Family:
    """The comparisons of one experiment: each scheme against ``baseline``, or every pair where
    it is None; ``exploratory`` where the data chose the family, not the user in advance."""

    baseline: str | None
    exploratory: bool

    @property
    def pairs(self) -> Pairs:
        return Pairs.all if self.baseline is None else Pairs.baseline


def _family(block: pd.DataFrame, baseline: str | None, all_pairs: bool) -> Family:
    """How one experiment's schemes are compared: every pair on request; against the baseline
    named (``best``: every pair, since picking the best mean first inflates false positives);
    else against the baseline its config declared; every pair, exploratory, where none did."""
    if all_pairs or baseline == BEST:
        return Family(None, exploratory=not all_pairs)
    if baseline is not None:
        return Family(baseline, exploratory=False)
    declared = block.get("declared_baseline", pd.Series(dtype=object)).dropna()
    if len(declared):
        return Family(str(declared.iloc[0]), exploratory=False)
    return Family(None, exploratory=True)  # an older version's results: nothing declared


def _contrasts(means: pd.Series, baseline: str | None) -> list[tuple[str, str]]:
    """The (scheme, baseline) pairs to test among groups with these means: each against the
    baseline; or, where it is None, every pair, the better mean as the baseline."""
    if baseline is None:
        ranked = list(means.sort_values(ascending=False).index)
        return [(worse, better) for i, better in enumerate(ranked) for worse in ranked[i + 1 :]]
    if baseline not in means:
        return []
    return [(scheme, baseline) for scheme in means.index.drop(baseline)]


def pairwise(
    runs: pd.DataFrame,
    baseline: str | None = None,
    alpha: float = 0.05,
    metric: str = "final_test_acc",
    all_pairs: bool = False,
) -> pd.DataFrame:
    """Every group against the baseline scheme of its experiment (default: the one its config
    declared, column ``declared_baseline``; ``best``: every pair, exploratory), or with
    ``all_pairs`` every pair of groups, on ``metric`` (final test accuracy, or
    ``test_acc_recalibrated``): the difference in points with its 95% CI, Welch's t-test, the
    paired t-test where seeds pair up, Cohen's d and d_z, Holm-corrected p (over the
    comparisons of one experiment) and a verdict in words. Runs without the metric (no BN to
    re-calibrate) are left out."""
    rows = []
    for (experiment, config), block in runs.groupby(["experiment", "config"], sort=False):
        family = _family(block, baseline, all_pairs)
        accuracy = block.dropna(subset=[metric]).set_index(["scheme", "seed"])[metric]
        means = accuracy.groupby(level="scheme").mean()
        grid = block[grid_columns(block)].iloc[0].to_dict()
        labels = {"experiment": experiment, "config": config, **grid}
        for scheme, base in _contrasts(means, family.baseline):
            row = _compare_pair(accuracy.loc[base], accuracy.loc[scheme], 1 - alpha)
            rows.append({**labels, "scheme": scheme, "baseline": base, "metric": metric, **row})
            rows[-1].update(pairs=family.pairs.value, exploratory=family.exploratory)
    if not rows:
        return pd.DataFrame()
    pairs = pd.DataFrame(rows)
    # one family of tests per experiment (and grid point): unrelated runs change nothing
    pairs["p_holm"] = pairs.groupby(["experiment", "config"], sort=False)["p"].transform(holm)
    pairs["significant"] = pairs["p_holm"] < alpha
    pairs["verdict"] = [_labelled(row, _verdict(row, alpha)) for row in pairs.itertuples()]
    return pairs


def _labelled(row: Any, text: str) -> str:
    """A verdict or ranking line with what it is: its experiment, the metric where it is not
    the plain final accuracy, and whether it is exploratory."""
    where = "" if row.experiment == "." else f"[{row.experiment}] "
    after = "after BN re-calibration: " if row.metric == "test_acc_recalibrated" else ""
    return where + (EXPLORATORY if row.exploratory else "") + after + text


def rankings(runs: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """Per experiment and metric where every pair was compared, the schemes best first, each
    joined to the next by ">" where their corrected difference is significant, else "≈"."""
    lines = []
    every_pair = pairs[pairs["pairs"] == Pairs.all.value]
    families = every_pair.groupby(["experiment", "config", "metric"], sort=False)
    for (experiment, config, metric), family in families:
        ours = runs[(runs["experiment"] == experiment) & (runs["config"] == config)]
        means = ours.dropna(subset=[metric]).groupby("scheme")[metric].mean()
        ranked = list(means.sort_values(ascending=False).index)
        significant = family.loc[family["significant"], ["scheme", "baseline"]]
        apart = {frozenset(pair) for pair in significant.itertuples(index=False)}
        line = ranked[0]
        for better, worse in itertools.pairwise(ranked):
            line += f" {'>' if frozenset((better, worse)) in apart else '≈'} {worse}"
        lines.append(_labelled(next(family.itertuples()), line))
    return lines


def _verdict(row: Any, alpha: float) -> str:
    diff = row.diff_points
    if row.test == CONSTANT_DIFFERENCE:
        return (
            f"{row.scheme} vs {row.baseline}: every one of {row.n_paired} paired seeds differs "
            f"by exactly {diff:+.2f} points; a t-test is undefined without spread, so no p"
        )
    if not row.test and min(row.n, row.n_baseline) >= 2:
        if abs(diff) < 1e-9:
            return f"{row.scheme} vs {row.baseline}: no difference, no variance"
        return f"{row.scheme} vs {row.baseline}: {diff:+.2f} points, no spread to test"
    if not row.test:
        return (
            f"{row.scheme} vs {row.baseline}: {diff:+.2f} points; n = {row.n} and "
            f"{row.n_baseline}: too few runs to test (2 or more each)"
        )
    runs = (
        f"n = {row.n_paired} paired seeds"
        if row.test == "paired t"
        else (f"n = {row.n} and {row.n_baseline} runs")
    )
    ci = f"95% CI {row.diff_ci_low:+.2f} to {row.diff_ci_high:+.2f}"
    d = "" if math.isnan(row.cohens_d) else f", d = {row.cohens_d:.2g}"
    if row.test == "paired t":
        d += f", d_z = {row.cohens_dz:.2g}"
    if row.significant:
        side = "above" if diff > 0 else "below"
        return (
            f"{row.scheme} is {abs(diff):.2f} points {side} {row.baseline} ({ci}{d}), "
            f"p = {row.p_holm:.2g} after correction, {runs}"
        )
    return (
        f"no significant difference between {row.scheme} and {row.baseline} "
        f"({diff:+.2f} points, {ci}{d}, p = {row.p_holm:.2g} after correction, {runs}; "
        f"α = {alpha})"
    )


def _baselines_missing(runs: pd.DataFrame, baseline: str | None) -> list[str]:
    """One message per experiment whose baseline (named, or declared) has no completed run:
    its schemes are not compared, rather than compared against one the data chose."""
    messages = []
    for (experiment, _), block in runs.groupby(["experiment", "config"], sort=False):
        family = _family(block, baseline, all_pairs=False)
        if family.baseline is not None and family.baseline not in set(block["scheme"]):
            how = "given" if baseline else "declared"
            messages.append(
                f"{experiment}: the {how} baseline {family.baseline} has no completed runs, so "
                "nothing there is compared (name another with --baseline, or use --pairs all)"
            )
    return messages


def compare(
    root: str | Path, *, baseline: str | None = None, all_pairs: bool = False, write: bool = True
) -> Comparison:
    """Summarise every run below ``root`` and test each scheme against the baseline its config
    declared, or ``baseline`` (``best``: every pair, exploratory); with ``all_pairs`` every pair
    of schemes; rank them where every pair was tested. Write ``root/summary.csv`` and
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
    pairs = pairwise(runs, baseline, all_pairs=all_pairs)
    if "test_acc_recalibrated_mean" in summary:  # a family of its own: another question
        recalibrated = pairwise(runs, baseline, metric="test_acc_recalibrated", all_pairs=all_pairs)
        if len(recalibrated):
            pairs = pd.concat([p for p in (pairs, recalibrated) if len(p)], ignore_index=True)
    if not all_pairs:
        problems += _baselines_missing(runs, baseline)
    for experiment, configs in runs.groupby("experiment")["config"].nunique().items():
        if configs > 1:
            problems.append(
                f"{root / experiment}: runs of {configs} different configs, shown apart "
                "(column config)"
            )
    ranked = rankings(runs, pairs) if len(pairs) else []
    comparison = Comparison(
        runs, collected.epochs, collected.shifts, summary, pairs, incomplete, problems, ranked
    )
    if write:
        try:
            atomic_write_text(root / SUMMARY_FILE, summary.to_csv(index=False))
            atomic_write_text(root / COMPARISONS_FILE, pairs.to_csv(index=False))
        except OSError as err:  # a read-only folder, a full disk: the figures still stand
            comparison.unwritten = f"{err.filename or root}: {err.strerror or err}"
    return comparison
