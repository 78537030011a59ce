"""verdicts.py's equivalence tests, detectable differences and families, checked against scipy
and against counts made by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnorder.analysis.verdicts import FamilyScope, detectable, pairwise, t_power


def runs_table(groups: dict[str, dict[int, float]], **labels: object) -> pd.DataFrame:
    """compare's runs table for one experiment; the first scheme is the declared baseline."""
    first = next(iter(groups))
    rows = [
        {"experiment": ".", "config": "c", "scheme": scheme, "seed": seed,
         "declared_baseline": first, "final_test_acc": acc, **labels}
        for scheme, by_seed in groups.items()
        for seed, acc in by_seed.items()
    ]  # fmt: skip
    return pd.DataFrame(rows)


BASE = {0: 0.800, 1: 0.820, 2: 0.810, 3: 0.830, 4: 0.815}
NEAR = {0: 0.802, 1: 0.818, 2: 0.813, 3: 0.829, 4: 0.816}  # within a few tenths of BASE


def test_tost_against_two_one_sided_scipy_tests() -> None:
    pairs = pairwise(runs_table({"A": BASE, "N": NEAR}, margin=1.0))
    row = pairs.iloc[0]
    diffs = np.array([NEAR[s] - BASE[s] for s in BASE]) * 100
    above = stats.ttest_1samp(diffs, -1.0, alternative="greater").pvalue
    below = stats.ttest_1samp(diffs, 1.0, alternative="less").pvalue
    assert row["p_equivalence"] == pytest.approx(max(above, below))
    half = stats.t.ppf(0.95, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert row["equivalence_ci_low"] == pytest.approx(diffs.mean() - half)
    assert row["equivalence_ci_high"] == pytest.approx(diffs.mean() + half)
    assert row["equivalent"] and row["outcome"] == "equivalent"
    assert row["verdict"].startswith("N is equivalent to A as trained within ±1 point: ")
    # the same data with a margin the interval does not fit inside: not equivalent
    narrow = pairwise(runs_table({"A": BASE, "N": NEAR}, margin=0.1)).iloc[0]
    assert not narrow["equivalent"] and narrow["outcome"] == "inconclusive"
    assert "not shown inside ±0.1 points" in narrow["verdict"]


def test_welch_tost_uses_welch_df() -> None:
    other = {10: 0.805, 11: 0.825, 12: 0.812}  # no seed in common with BASE
    row = pairwise(runs_table({"A": BASE, "W": other}, margin=3.0)).iloc[0]
    a, w = np.array(list(BASE.values())) * 100, np.array(list(other.values())) * 100
    va, vw = a.var(ddof=1) / len(a), w.var(ddof=1) / len(w)
    df = (va + vw) ** 2 / (va**2 / (len(a) - 1) + vw**2 / (len(w) - 1))
    se, diff = math.sqrt(va + vw), w.mean() - a.mean()
    expected = max(stats.t.sf((diff + 3) / se, df), stats.t.cdf((diff - 3) / se, df))
    assert row["test"] == "Welch t" and row["df"] == pytest.approx(df)
    assert row["p_equivalence"] == pytest.approx(expected)


def test_detectable_difference_has_the_stated_power() -> None:
    for df, alpha in [(2, 0.05), (4, 0.05), (9, 0.01), (2, 0.05 / 30)]:
        delta = detectable(1.0, df, alpha)
        critical = stats.t.ppf(1 - alpha / 2, df)
        power = stats.nct.sf(critical, df, delta) + stats.nct.cdf(-critical, df, delta)
        if math.isfinite(power):  # scipy's nct is NaN where the noncentrality is large
            assert power == pytest.approx(0.8, abs=1e-6)
        assert t_power(delta, df, critical) == pytest.approx(0.8, abs=1e-6)
    # by simulation too: paired tests of 3 seeds on a true difference of that size
    rng = np.random.default_rng(0)
    sd, n, alpha = 1.5, 3, 0.05
    delta = detectable(sd / math.sqrt(n), n - 1, alpha)
    samples = rng.normal(delta, sd, size=(20000, n))
    p = stats.ttest_1samp(samples, 0.0, axis=1).pvalue
    assert (p < alpha).mean() == pytest.approx(0.8, abs=0.015)
    assert math.isnan(detectable(0.0, 2, 0.05))


def test_detectable_difference_is_at_the_family_level() -> None:
    pairs = pairwise(
        runs_table({"A": BASE, "N": NEAR, "B": {s: v - 0.02 for s, v in BASE.items()}})
    )
    row = pairs.set_index("scheme").loc["N"]
    assert row["family_size"] == 1  # B's paired difference is constant: degenerate, untested
    assert row["detectable_points"] == pytest.approx(detectable(row["se_points"], 4, 0.05 / 1))
    three = {s: v - 0.02 + 0.001 * s for s, v in BASE.items()}
    wider = pairwise(runs_table({"A": BASE, "N": NEAR, "B": three})).set_index("scheme")
    assert wider.loc["N", "family_size"] == 2
    assert wider.loc["N", "detectable_points"] == pytest.approx(
        detectable(row["se_points"], 4, 0.05 / 2)
    )


def _grid_runs() -> pd.DataFrame:
    """Two grid points of one study; bn_only (the control) is one set of runs shown at both
    (one run hash per seed), the other schemes are trained at each."""
    rng = np.random.default_rng(1)
    frames = []
    for point, cost in (("dropout=0.1", 0.01), ("dropout=0.3", 0.05)):
        for scheme, mean in (("bn_only", 0.8), ("drop", 0.8 - cost), ("plain", 0.7)):
            for seed in range(4):
                shared = scheme in ("bn_only", "plain")
                frames.append(
                    {"study": ".", "experiment": point, "config": point,
                     "model.dropout": float(point[-3:]), "scheme": scheme, "seed": seed,
                     "declared_baseline": "bn_only",
                     "run_hash": f"{scheme}{seed}" if shared else f"{point}{scheme}{seed}",
                     "final_test_acc": mean + 0.005 * seed + rng.normal(0, 0.003),
                     "test_acc_recalibrated": mean + 0.004 * seed + rng.normal(0, 0.003)}
                )  # fmt: skip
    runs = pd.DataFrame(frames)
    # bn_only and plain: the same numbers at both points, as a shared run has
    for scheme in ("bn_only", "plain"):
        mask = runs["scheme"] == scheme
        first = runs[mask & (runs["experiment"] == "dropout=0.1")]
        for column in ("final_test_acc", "test_acc_recalibrated"):
            runs.loc[mask & (runs["experiment"] == "dropout=0.3"), column] = first[column].values
    return runs


def test_the_family_is_the_whole_study_and_a_repeated_test_counts_once() -> None:
    pairs = pairwise(_grid_runs())
    # 2 points × 2 schemes × 2 metrics = 8 rows; plain vs bn_only is the same test at both
    # points (both sides shared), so the family holds 6 distinct tests
    assert len(pairs) == 8 and set(pairs["family_size"]) == {6}
    plain = pairs[pairs["scheme"] == "plain"]
    for _, same in plain.groupby("metric"):
        assert same["p_holm"].nunique() == 1 and same["test_key"].nunique() == 1
    distinct = pairs.drop_duplicates("test_key")
    m = len(distinct)
    ordered = distinct["p"].sort_values()
    expected = (ordered * np.arange(m, 0, -1)).clip(upper=1).cummax()
    for index, value in expected.items():
        assert distinct.loc[index, "p_holm"] == pytest.approx(value)
    assert "Holm over 6 tests of the study" in pairs.iloc[0]["verdict"]


def test_a_family_per_grid_point_on_request() -> None:
    pairs = pairwise(_grid_runs(), scope=FamilyScope.grid_point)
    assert set(pairs["family_size"]) == {4}  # 2 schemes × 2 metrics at each point
    assert set(pairs["family"]) == {"dropout=0.1/dropout=0.1", "dropout=0.3/dropout=0.3"}
    assert "Holm over 4 tests of grid point dropout=0.1" in pairs.iloc[0]["verdict"]
