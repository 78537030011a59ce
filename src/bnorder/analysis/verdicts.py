"""Verdicts: each scheme against its experiment's baseline, on each accuracy the runs have.

For every (scheme, baseline, metric): the difference in points with its 95% CI; the paired
t-test on same-seed differences (Welch's where seeds do not pair up); two one-sided tests
(TOST) of equivalence within the declared margin; and the smallest difference the design could
detect at 80 % power. Holm's correction runs over a family: by default the whole study (every
grid point and both metrics), or each grid point on its own (``FamilyScope.grid_point``). A
test repeated unchanged at several grid points (both sides trained once for all of them)
counts once in its family. Each comparison ends in one ``Outcome``:

- better / worse: the difference is significant after correction (and not inside the margin);
- equivalent: TOST puts the difference inside ±margin after correction. Only this is "no
  cost": a difference that is merely not significant is
- inconclusive, with the detectable difference saying how coarse the design was;
- degenerate: every run of one side at exactly one value (all at chance, say), or every
  paired difference equal: no t-test is defined;
- untested: fewer than 2 runs on a side.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd
from scipy import integrate, optimize, special, stats

from bnorder.runs.metrics import grid_columns

ALPHA = 0.05
POWER = 0.8  # of the detectable difference
DEFAULT_MARGIN = 1.0  # points; configs declare their own (equivalence_margin)
BEST = "best"  # --baseline best: the baseline chosen from the data, so every pair is tested
EXPLORATORY = "exploratory: "  # the mark of every verdict whose family was chosen from the data

# The accuracies compared, and how a reader should be told which one a verdict is about.
METRICS: dict[str, str] = {
    "final_test_acc": "as trained",
    "test_acc_recalibrated": "with BN re-estimated (dropout off)",
}
PLAIN_IMAGES = " from un-augmented images"  # re-estimated as earlier versions did


class Outcome(str, Enum):
    better = "better"
    worse = "worse"
    equivalent = "equivalent"
    inconclusive = "inconclusive"
    degenerate = "degenerate"
    untested = "untested"


class FamilyScope(str, Enum):
    """What one Holm family holds: the whole study, or one grid point (both metrics)."""

    study = "study"
    grid_point = "grid-point"


class Pairs(str, Enum):
    """Which comparisons compare makes: each scheme against the baseline, or every pair."""

    baseline = "baseline"
    all = "all"


def holm(p_values: pd.Series) -> pd.Series:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count)."""
    valid = p_values.dropna().sort_values()
    m = len(valid)
    adjusted = (valid * (m - pd.Series(range(m), index=valid.index))).clip(upper=1).cummax()
    return adjusted.reindex(p_values.index)


def t_power(nc: float, df: float, critical: float) -> float:
    """P(|T| > critical) for T noncentral t with ``df`` and noncentrality ``nc``: scipy's nct,
    or where it fails (NaN at the large noncentralities that few seeds and a strict α need),
    the normal part integrated over the chi-square one."""
    power = stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)
    if math.isfinite(power):
        return float(power)

    def given(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return (stats.norm.sf(scale - nc) + stats.norm.cdf(-scale - nc)) * stats.chi2.pdf(v, df)

    return float(integrate.quad(given, 0, math.inf, limit=200)[0])


@functools.lru_cache(maxsize=4096)
def _noncentrality(df: float, alpha: float, power: float = POWER) -> float:
    """The noncentrality at which a two-sided t-test of level ``alpha`` on ``df`` degrees of
    freedom rejects with probability ``power``."""
    critical = stats.t.ppf(1 - alpha / 2, df)
    high = critical + 3
    while t_power(high, df, critical) < power:
        high *= 2
    return float(optimize.brentq(lambda nc: t_power(nc, df, critical) - power, 0.0, high))


def detectable(se: float, df: float, alpha: float, power: float = POWER) -> float:
    """The smallest true difference (in the units of ``se``) that a t-test with this standard
    error and ``df`` detects at level ``alpha`` with ``power``; NaN where untestable."""
    if not (se > 0 and df > 0 and 0 < alpha < 1):
        return math.nan
    return _noncentrality(round(df, 6), alpha, power) * se


@dataclass(frozen=True)
class TTest:
    """One t-test of a mean difference (in points) against 0, by the textbook formulas (checked
    against scipy's ``ttest_rel`` and ``ttest_ind`` in the tests; a tenth of their time, which
    the null simulation's thousands of comparisons need), and TOST for equivalence."""

    diff: float
    se: float
    df: float

    def p(self) -> float:
        return float(2 * special.stdtr(self.df, -abs(self.diff / self.se)))

    def interval(self, level: float) -> tuple[float, float]:
        half = special.stdtrit(self.df, (1 + level) / 2) * self.se
        return self.diff - half, self.diff + half

    def p_equivalent(self, margin: float) -> float:
        """TOST: the larger of the one-sided p-values against -margin and +margin."""
        above = 1 - special.stdtr(self.df, (self.diff + margin) / self.se)
        below = special.stdtr(self.df, (self.diff - margin) / self.se)
        return float(max(above, below))


def paired_test(differences: np.ndarray) -> TTest:
    n = len(differences)
    return TTest(float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(n)), n - 1)


def welch_test(base: np.ndarray, other: np.ndarray) -> TTest:
    v1, v2 = other.var(ddof=1) / len(other), base.var(ddof=1) / len(base)
    df = (v1 + v2) ** 2 / (v1**2 / (len(other) - 1) + v2**2 / (len(base) - 1))
    return TTest(float(other.mean() - base.mean()), float(math.sqrt(v1 + v2)), float(df))


DEGENERATE = "none: a side at one value"
CONSTANT_DIFFERENCE = "none: constant paired difference"


def _compare_pair(base: pd.Series, other: pd.Series, alpha: float, margin: float) -> dict[str, Any]:
    """Two groups' accuracies (fractions, indexed by seed): the difference in points, and its
    tests, paired where every run has its same-seed partner, else Welch's."""
    b, o = base.to_numpy(dtype=float) * 100, other.to_numpy(dtype=float) * 100
    shared = base.index.intersection(other.index)
    row: dict[str, Any] = {
        "n_baseline": len(b),
        "n": len(o),
        "n_paired": len(shared),
        "diff_points": o.mean() - b.mean(),
        "test": "",
        "margin": margin,
    }
    if min(len(b), len(o)) < 2:
        return row
    if min(np.ptp(b), np.ptp(o)) <= 1e-9:
        return {**row, "test": DEGENERATE, "degenerate_value": b[0] if np.ptp(b) <= 1e-9 else o[0]}
    paired = len(shared) == len(b) == len(o)
    if paired:
        differences = other.sort_index().to_numpy(float) - base.sort_index().to_numpy(float)
        if np.ptp(differences) * 100 <= 1e-9:
            return {**row, "test": CONSTANT_DIFFERENCE}
        test = paired_test(differences * 100)
    else:
        test = welch_test(b, o)
    low, high = test.interval(1 - alpha)
    eq_low, eq_high = test.interval(1 - 2 * alpha)
    pooled = math.sqrt(
        ((len(b) - 1) * b.var(ddof=1) + (len(o) - 1) * o.var(ddof=1)) / (len(b) + len(o) - 2)
    )
    row.update(
        test="paired t" if paired else "Welch t",
        p=test.p(),
        diff_ci_low=low,
        diff_ci_high=high,
        se_points=test.se,
        df=test.df,
        p_equivalence=test.p_equivalent(margin),
        equivalence_ci_low=eq_low,
        equivalence_ci_high=eq_high,
        cohens_d=(o.mean() - b.mean()) / pooled if pooled > 0 else math.nan,
        cohens_dz=test.diff / (test.se * math.sqrt(len(shared))) if paired else math.nan,
    )
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


def choose_family(block: pd.DataFrame, baseline: str | None, all_pairs: bool) -> Family:
    """How one experiment's schemes are compared: every pair on request; against the baseline
    named (``best``: every pair, since picking the best mean first inflates false positives;
    another than the study declared: exploratory, a re-analysis chosen after the data); else
    against the baseline its config declared; every pair, exploratory, where none did."""
    if all_pairs or baseline == BEST:
        return Family(None, exploratory=not all_pairs)
    declared = block.get("declared_baseline", pd.Series(dtype=object)).dropna()
    if baseline is not None:  # chosen now: exploratory where the study declared another
        return Family(baseline, exploratory=len(declared) > 0 and declared.iloc[0] != baseline)
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


def _side(block: pd.DataFrame, scheme: str) -> str:
    """What names one side's runs across grid points: their run hashes where known (a run
    shared by grid points has one), else the group itself."""
    runs = block[block["scheme"] == scheme]
    if "run_hash" in runs and runs["run_hash"].notna().all():
        return ",".join(sorted(runs["run_hash"]))
    return f"{block['experiment'].iloc[0]}|{block['config'].iloc[0]}|{scheme}"


def _metric_label(block: pd.DataFrame, metric: str) -> str:
    label = METRICS[metric]
    plain = block.get("diagnostics_images", pd.Series(dtype=object)) == "plain"
    return label + PLAIN_IMAGES if metric == "test_acc_recalibrated" and plain.any() else label


def _experiment_rows(
    block: pd.DataFrame, family: Family, metric: str, alpha: float, margin: float
) -> list[dict[str, Any]]:
    """One experiment's comparisons on one metric (its runs without the metric left out)."""
    accuracy = block.dropna(subset=[metric]).set_index(["scheme", "seed"])[metric]
    if accuracy.empty:
        return []
    means = accuracy.groupby(level="scheme").mean()
    first = block.iloc[0]
    labels = {
        "study": first.get("study", first["experiment"]),
        "experiment": first["experiment"],
        "config": first["config"],
        **{c: first[c] for c in grid_columns(block)},
    }
    rows, sides = [], {scheme: _side(block, scheme) for scheme in means.index}
    for scheme, base in _contrasts(means, family.baseline):
        row = _compare_pair(accuracy.loc[base], accuracy.loc[scheme], alpha, margin)
        key = f"{metric}|{sides[scheme]}|{sides[base]}"
        rows.append(
            {**labels, "scheme": scheme, "baseline": base, "metric": metric,
             "metric_label": _metric_label(block, metric), **row, "test_key": key,
             "pairs": family.pairs.value, "exploratory": family.exploratory}
        )  # fmt: skip
    return rows


def pairwise(
    runs: pd.DataFrame,
    baseline: str | None = None,
    alpha: float = ALPHA,
    *,
    all_pairs: bool = False,
    scope: FamilyScope = FamilyScope.study,
    metrics: tuple[str, ...] = tuple(METRICS),
) -> pd.DataFrame:
    """Every group against the baseline scheme of its experiment (default: the one its config
    declared, column ``declared_baseline``; ``best``: every pair, exploratory), or with
    ``all_pairs`` every pair of groups, on each of ``metrics`` the runs have; then Holm over
    each family (``scope``), TOST against each experiment's ``margin`` column (points; default
    ``DEFAULT_MARGIN``), the detectable difference and the verdict."""
    rows = []
    for _, block in runs.groupby(["experiment", "config"], sort=False):
        family = choose_family(block, baseline, all_pairs)
        margin = float(block["margin"].iloc[0]) if "margin" in block else DEFAULT_MARGIN
        for metric in metrics:
            if metric in block:
                rows += _experiment_rows(block, family, metric, alpha, margin)
    if not rows:
        return pd.DataFrame()
    pairs = pd.DataFrame(rows)
    for column in ("p", "p_equivalence", "se_points", "df", "degenerate_value"):
        if column not in pairs:
            pairs[column] = math.nan
    return _decide(_corrected(pairs, scope), alpha)


def _corrected(pairs: pd.DataFrame, scope: FamilyScope) -> pd.DataFrame:
    """Holm over each family, each distinct test counted once (a test repeated at several grid
    points gets one adjusted p); the family's name and size, the detectable difference at the
    family's Bonferroni level α/m (Holm's strictest step: an upper bound)."""
    by = ["study"] if scope is FamilyScope.study else ["experiment", "config"]
    pairs["family"] = pairs[by].astype(str).agg("/".join, axis=1)
    for column in ("p", "p_equivalence"):
        adjusted = pd.Series(np.nan, index=pairs.index)
        for _, family in pairs.groupby("family", sort=False):
            distinct = family.drop_duplicates("test_key")
            corrected = dict(zip(distinct["test_key"], holm(distinct[column]), strict=True))
            adjusted[family.index] = family["test_key"].map(corrected)
        pairs[f"{column}_holm"] = adjusted
    tested = pairs.dropna(subset=["p"]).drop_duplicates(["family", "test_key"])
    pairs["family_size"] = pairs["family"].map(tested.groupby("family").size()).fillna(0)
    pairs["family_size"] = pairs["family_size"].astype(int)
    return pairs


def _decide(pairs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    size = pairs["family_size"].clip(lower=1)
    pairs["detectable_points"] = [
        detectable(se, df, alpha / m)
        for se, df, m in zip(pairs["se_points"], pairs["df"], size, strict=True)
    ]
    pairs["significant"] = pairs["p_holm"] < alpha
    pairs["equivalent"] = pairs["p_equivalence_holm"] < alpha
    pairs["outcome"] = [_outcome(row).value for row in pairs.itertuples()]
    pairs["verdict"] = [_labelled(row, verdict_text(row, alpha)) for row in pairs.itertuples()]
    return pairs


def _outcome(row: Any) -> Outcome:
    if row.test in (DEGENERATE, CONSTANT_DIFFERENCE):
        return Outcome.degenerate
    if not row.test:
        return Outcome.untested
    if row.equivalent:
        return Outcome.equivalent
    if row.significant:
        return Outcome.better if row.diff_points > 0 else Outcome.worse
    return Outcome.inconclusive


def margin_words(margin: float) -> str:
    return f"±{margin:g} point{'' if margin == 1 else 's'}"


def _family_words(row: Any) -> str:
    where = "the study" if row.family == str(row.study) else f"grid point {row.experiment}"
    return f"Holm over {row.family_size} tests of {where}"


def verdict_text(row: Any, alpha: float = ALPHA) -> str:
    """One comparison in a sentence: its metric, difference, interval, test, correction and
    resolution (the ``pairwise`` row, as ``itertuples`` gives it)."""
    diff, what = row.diff_points, f"{row.metric_label}"
    pair = f"{row.scheme} vs {row.baseline} {what}"
    if row.test == DEGENERATE:
        return (
            f"{pair}: degenerate, {diff:+.2f} points; every run of one side is at exactly "
            f"{row.degenerate_value:.2f} %, so no t-test is defined"
        )
    if row.test == CONSTANT_DIFFERENCE:
        return (
            f"{pair}: degenerate, every one of {row.n_paired} paired seeds differs by exactly "
            f"{diff:+.2f} points; a t-test is undefined without spread, so no p"
        )
    if not row.test:
        return f"{pair}: {diff:+.2f} points; n = {row.n} and {row.n_baseline}: too few runs to test"
    n = (
        f"n = {row.n_paired} paired seeds"
        if row.test == "paired t"
        else f"n = {row.n}, {row.n_baseline}"
    )
    ci = f"95% CI {row.diff_ci_low:+.2f} to {row.diff_ci_high:+.2f}"
    band = f"90% CI {row.equivalence_ci_low:+.2f} to {row.equivalence_ci_high:+.2f}"
    resolution = f"detects {row.detectable_points:.1f} points at {POWER:.0%} power"
    family = _family_words(row)
    if row.equivalent:
        return (
            f"{row.scheme} is equivalent to {row.baseline} {what} within "
            f"{margin_words(row.margin)}: {diff:+.2f} points, {band} (two one-sided tests, "
            f"p = {row.p_equivalence_holm:.2g}, {family}; {n})"
        )
    if row.significant:
        side = "above" if diff > 0 else "below"
        return (
            f"{row.scheme} is {abs(diff):.2f} points {side} {row.baseline} {what} ({ci}; "
            f"{row.test}, p = {row.p_holm:.2g}, {family}; {n})"
        )
    return (
        f"{pair}: inconclusive, {diff:+.2f} points ({ci}): no significant difference "
        f"(p = {row.p_holm:.2g}) and not shown inside {margin_words(row.margin)} (TOST p = "
        f"{row.p_equivalence_holm:.2g}), {family}; {n}; this design {resolution}"
    )


def _labelled(row: Any, text: str) -> str:
    """A verdict or ranking line with what it is: its experiment, and whether it is
    exploratory."""
    where = "" if row.experiment == "." else f"[{row.experiment}] "
    return where + (EXPLORATORY if row.exploratory else "") + text


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
        first = next(family.itertuples())
        lines.append(_labelled(first, f"{METRICS[metric]}: {line}"))
    return lines
