"""compare's statistics, checked against values computed by hand in the test."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnorder.analysis.compare import sample_stats, summarise
from bnorder.analysis.verdicts import holm, pairwise

FIXTURES = Path(__file__).resolve().parent / "fixtures"
T_975 = {1: 12.706204736, 3: 3.182446305, 4: 2.776445105}  # Student t quantiles, from tables


def runs_table(groups: dict[str, dict[int, float]], declared: str | None = "") -> pd.DataFrame:
    """compare's runs table; the declared baseline is the first scheme listed unless given."""
    declared = next(iter(groups)) if declared == "" else declared
    rows = []
    for scheme, by_seed in groups.items():
        for seed, acc in by_seed.items():
            rows.append(
                {
                    "experiment": ".",
                    "config": "c",
                    "scheme": scheme,
                    "seed": seed,
                    "declared_baseline": declared,
                    "epochs": 3,
                    "final_test_acc": acc,
                    "best_test_acc": acc + 0.01,
                    "final_train_acc": acc + 0.05,
                    "final_train_eval_acc": acc + 0.1,
                    "gap": 0.1,
                    "gap_train_mode": 0.05,
                    "epoch_seconds": 1.0,
                    "images_per_second": 100.0,
                }
            )
    return pd.DataFrame(rows)


A = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.83}
B = {0: 0.78, 1: 0.79, 2: 0.79, 3: 0.81}
C = {0: 0.70, 5: 0.72, 6: 0.71}  # shares only seed 0 with A: no pairing
D = {9: 0.60}  # a single run


def test_sample_stats_against_hand_computation() -> None:
    values = list(A.values())
    got = sample_stats(pd.Series(values), "x")
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = T_975[3] * sd / math.sqrt(4)
    assert got["x_mean"] == pytest.approx(mean)
    assert got["x_std"] == pytest.approx(sd)
    assert got["x_median"] == pytest.approx(statistics.median(values))
    assert got["x_ci_low"] == pytest.approx(mean - half, rel=1e-7)
    assert got["x_ci_high"] == pytest.approx(mean + half, rel=1e-7)
    single = sample_stats(pd.Series([0.5]), "x")
    assert math.isnan(single["x_std"]) and math.isnan(single["x_ci_low"])


def test_summary_has_the_statistics_per_group() -> None:
    summary = summarise(runs_table({"A": A, "B": B, "D": D})).set_index("scheme")
    assert list(summary.index) == ["A", "B", "D"]  # best first
    assert summary.loc["A", "runs"] == 4 and summary.loc["D", "runs"] == 1
    for metric in ("final_test_acc", "best_test_acc", "gap", "gap_train_mode"):
        for stat in ("mean", "std", "median", "ci_low", "ci_high"):
            assert f"{metric}_{stat}" in summary.columns
    assert math.isnan(summary.loc["D", "final_test_acc_ci_low"])


def test_holm_against_hand_computation() -> None:
    p = pd.Series([0.01, 0.04, 0.03, math.nan])
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 → 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    assert holm(p).tolist()[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm(p).iloc[3])


def test_paired_and_welch_tests_against_hand_computation() -> None:
    from scipy import stats

    pairs = pairwise(runs_table({"A": A, "B": B, "C": C, "D": D})).set_index("scheme")
    assert set(pairs["baseline"]) == {"A"}  # the declared baseline: the first scheme listed
    assert not pairs["exploratory"].any() and set(pairs["pairs"]) == {"baseline"}

    # B against A: four same-seed pairs → the paired t-test
    diffs = [B[s] - A[s] for s in A]
    mean_d, sd_d = statistics.mean(diffs), statistics.stdev(diffs)
    t_paired = mean_d / (sd_d / 2)
    b = pairs.loc["B"]
    assert b["test"] == "paired t" and b["n_paired"] == 4
    assert b["diff_points"] == pytest.approx(mean_d * 100)
    assert b["p"] == pytest.approx(2 * stats.t.sf(abs(t_paired), 3))
    assert b["p"] == pytest.approx(stats.ttest_rel(list(B.values()), list(A.values())).pvalue)
    half = T_975[3] * sd_d / 2 * 100
    assert b["diff_ci_low"] == pytest.approx(mean_d * 100 - half, rel=1e-6)
    pooled = math.sqrt((statistics.variance(A.values()) + statistics.variance(B.values())) / 2)
    assert b["cohens_d"] == pytest.approx(mean_d / pooled)
    assert b["cohens_dz"] == pytest.approx(mean_d / sd_d)  # the paired effect size

    # C against A: one shared seed → Welch's t-test with Welch–Satterthwaite df
    a, c = list(A.values()), list(C.values())
    va, vc = statistics.variance(a) / 4, statistics.variance(c) / 3
    t_welch = (statistics.mean(c) - statistics.mean(a)) / math.sqrt(va + vc)
    df = (va + vc) ** 2 / (va**2 / 3 + vc**2 / 2)
    row = pairs.loc["C"]
    assert row["test"] == "Welch t" and row["n_paired"] == 1
    assert row["p"] == pytest.approx(2 * stats.t.sf(abs(t_welch), df))

    # D: a single run cannot be tested
    assert pairs.loc["D", "test"] == "" and "too few runs to test" in pairs.loc["D", "verdict"]

    # Holm over the two tested comparisons, and the verdicts in words
    low, high = sorted([b["p"], row["p"]])
    expected = {low: 2 * low, high: max(2 * low, high)}  # Holm with m = 2
    assert b["p_holm"] == pytest.approx(expected[b["p"]])
    assert row["p_holm"] == pytest.approx(expected[row["p"]])
    assert b["significant"] and b["outcome"] == "worse" and b["family_size"] == 2
    assert b["verdict"] == (
        f"B is {abs(mean_d) * 100:.2f} points below A as trained (95% CI "
        f"{b['diff_ci_low']:+.2f} to {b['diff_ci_high']:+.2f}; paired t, p = {b['p_holm']:.2g}, "
        "Holm over 2 tests of the study; n = 4 paired seeds)"
    )


def test_paired_test_needs_every_run_paired_and_holm_stays_within_an_experiment() -> None:
    partly = {0: 0.80, 1: 0.79, 7: 0.78, 8: 0.81}  # shares seeds 0 and 1 with A only
    runs = runs_table({"A": A, "P": partly})
    other = runs_table({"A": A, "B": B}).assign(experiment="elsewhere")
    pairs = pairwise(pd.concat([runs, other], ignore_index=True)).set_index("scheme")
    assert pairs.loc["P", "test"] == "Welch t" and pairs.loc["P", "n_paired"] == 2
    # one comparison per experiment: Holm leaves each p as it is
    assert pairs.loc["P", "p_holm"] == pytest.approx(pairs.loc["P", "p"])
    assert pairs.loc["B", "p_holm"] == pytest.approx(pairs.loc["B", "p"])


def test_explicit_baseline_and_no_difference_verdict() -> None:
    same = {0: 0.80, 1: 0.83, 2: 0.79, 3: 0.82}
    pairs = pairwise(runs_table({"A": A, "E": same}), baseline="E").set_index("scheme")
    row = pairs.loc["A"]
    assert row["baseline"] == "E" and not row["significant"] and row["outcome"] == "inconclusive"
    # the study declared A: a baseline chosen now is a re-analysis, so exploratory
    assert row["exploratory"]
    assert row["verdict"].startswith("exploratory: A vs E as trained: inconclusive, +0.50 points")
    assert (
        "no significant difference" in row["verdict"]
        and "not shown inside ±1 point" in (row["verdict"])
    )
    assert f"this design detects {row['detectable_points']:.1f} points" in row["verdict"]


def test_recalibrated_accuracy_is_compared_against_the_same_baseline() -> None:
    runs = runs_table({"A": A, "B": B, "P": {0: 0.5, 1: 0.52}})  # P: no BN, nothing re-calibrated
    gained = {"A": -0.01, "B": 0.05, "P": math.nan}
    runs["test_acc_recalibrated"] = runs["final_test_acc"] + runs["scheme"].map(gained)
    runs.loc[runs["scheme"] == "B", "test_acc_recalibrated"] += [0.0, 0.01, 0.0, 0.002]
    every = pairwise(runs)
    pairs = every[every["metric"] == "test_acc_recalibrated"].set_index("scheme")
    assert list(pairs.index) == ["B"]  # P has nothing to compare
    # one family for both accuracies: B and P as trained, B re-estimated
    assert set(every["family_size"]) == {3} and set(every["family"]) == {"."}
    row = pairs.loc["B"]
    assert row["baseline"] == "A" and row["metric"] == "test_acc_recalibrated"  # as declared
    diff = [0.78 + 0.05 - 0.79, 0.79 + 0.06 - 0.81, 0.79 + 0.05 - 0.80, 0.81 + 0.052 - 0.82]
    assert row["diff_points"] == pytest.approx(statistics.mean(diff) * 100)
    assert row["test"] == "paired t"
    assert "A with BN re-estimated (dropout off)" in row["verdict"]


def test_ratio_stats_are_taken_on_the_log_scale() -> None:
    from bnorder.analysis.compare import ratio_stats

    got = ratio_stats(pd.Series([2.0, 8.0, math.nan]), "s")  # a run without the measurement
    sd = statistics.stdev([math.log(2), math.log(8)])
    half = T_975[1] * sd / math.sqrt(2)
    assert got["s_gmean"] == pytest.approx(4.0)
    assert got["s_gsd"] == pytest.approx(math.exp(sd))
    assert got["s_median"] == pytest.approx(5.0)
    assert got["s_ci_low"] == pytest.approx(4.0 * math.exp(-half))
    assert got["s_ci_high"] == pytest.approx(4.0 * math.exp(half))


def test_json_keeps_every_digit() -> None:
    """pandas' to_json rounds to 10 digits (3.1325118e-06 became 3.1325e-06); compare's JSON
    must give back exactly what comparisons.csv holds. NaN and infinity become null."""
    import json

    from bnorder.analysis.compare import Comparison
    from bnorder.analysis.view import comparison_json

    pairs = pd.DataFrame({"p": [3.1325118e-06, 1.2345678901e-9], "p_holm": [math.nan, math.inf]})
    empty = pd.DataFrame()
    comparison = Comparison(empty, empty, empty, pd.DataFrame({"runs": [3]}), pairs, empty, [])
    payload = json.loads(comparison_json(comparison))
    assert [row["p"] for row in payload["comparisons"]] == [3.1325118e-06, 1.2345678901e-9]
    assert [row["p_holm"] for row in payload["comparisons"]] == [None, None]
    assert payload["summary"] == [{"runs": 3}] and payload["incomplete"] == []


def test_degenerate_differences_are_said_not_hidden() -> None:
    """A constant paired difference has no t statistic: no p, no silent switch to Welch (which
    gave p = 0.017 for a constant -3.00 points). Two constant, equal groups: no difference, no
    variance."""
    base = {0: 0.80, 1: 0.82, 2: 0.84}
    shifted = {seed: value - 0.03 for seed, value in base.items()}
    flat = {0: 0.5, 1: 0.5, 2: 0.5}
    pairs = pairwise(runs_table({"A": base, "S": shifted}), baseline="A").set_index("scheme")
    row = pairs.loc["S"]
    assert row["test"] == "none: constant paired difference"
    assert math.isnan(row["p"]) and math.isnan(row["p_holm"]) and not row["significant"]
    assert row["diff_points"] == pytest.approx(-3.0)
    assert row["outcome"] == "degenerate"
    assert row["verdict"] == (
        "S vs A as trained: degenerate, every one of 3 paired seeds differs by exactly -3.00 "
        "points; a t-test is undefined without spread, so no p"
    )
    equal = pairwise(runs_table({"F": flat, "G": flat}), baseline="F").set_index("scheme")
    assert equal.loc["G", "verdict"] == (
        "G vs F as trained: degenerate, +0.00 points; every run of one side is at exactly "
        "50.00 %, so no t-test is defined"
    )
    # one side at chance, the other spread: still no t-test, and no family member
    chance = pairwise(runs_table({"A": base, "Z": {0: 0.1, 1: 0.1, 2: 0.1}}), baseline="A")
    assert chance.loc[0, "outcome"] == "degenerate" and chance.loc[0, "family_size"] == 0
    assert "exactly 10.00 %" in chance.loc[0, "verdict"]


def test_all_pairs_against_hand_computation() -> None:
    """Every pair once, the better mean as the baseline, Holm over the k(k-1)/2 family, and
    a ranking that joins neighbours without a significant corrected difference."""
    from bnorder.analysis.verdicts import rankings

    close = {0: 0.805, 1: 0.822, 2: 0.807, 3: 0.824}  # within noise of A, mean 0.8145
    runs = runs_table({"A": A, "B": B, "E": close})
    pairs = pairwise(runs, all_pairs=True)
    assert len(pairs) == 3  # k(k-1)/2
    by_pair = {(r.scheme, r.baseline): r for r in pairs.itertuples()}
    assert set(by_pair) == {("E", "A"), ("B", "A"), ("B", "E")}  # means: A > E > B
    groups = {"A": A, "B": B, "E": close}
    for (scheme, base), row in by_pair.items():
        diffs = [groups[scheme][s] - groups[base][s] for s in A]
        t = statistics.mean(diffs) / (statistics.stdev(diffs) / 2)
        assert row.test == "paired t"
        assert row.p == pytest.approx(2 * stats_t_sf(abs(t), 3))
    p = pairs.set_index(["scheme", "baseline"])["p"]
    ordered = p.sort_values()
    expected = (ordered * pd.Series([3, 2, 1], index=ordered.index)).clip(upper=1).cummax()
    for key, value in expected.items():
        assert pairs.set_index(["scheme", "baseline"]).loc[key, "p_holm"] == pytest.approx(value)
    significant = pairs.set_index(["scheme", "baseline"])["significant"]
    signs = [
        ">" if significant[("E", "A")] else "≈",
        ">" if significant[("B", "E")] else "≈",
    ]
    assert rankings(runs, pairs) == [f"as trained: A {signs[0]} E {signs[1]} B"]
    assert not significant[("E", "A")]  # E is A within noise: joined by ≈


def test_the_declared_baseline_is_the_default_and_best_is_exploratory_over_all_pairs() -> None:
    from bnorder.analysis.verdicts import rankings

    runs = runs_table({"A": A, "B": B, "E": {0: 0.76, 1: 0.79, 2: 0.77, 3: 0.78}}, declared="B")
    declared = pairwise(runs)
    assert set(declared["baseline"]) == {"B"} and set(declared["scheme"]) == {"A", "E"}
    assert not any(v.startswith("exploratory") for v in declared["verdict"])
    assert rankings(runs, declared) == []  # a ranking needs every pair

    best = pairwise(runs, baseline="best")
    every = pairwise(runs, all_pairs=True)
    assert len(best) == 3 and best["exploratory"].all() and set(best["pairs"]) == {"all"}
    assert all(v.startswith("exploratory: ") for v in best["verdict"])
    # the same tests and the same Holm family as --pairs all: only the label differs
    assert best["p_holm"].tolist() == pytest.approx(every["p_holm"].tolist())
    assert not every["exploratory"].any()
    assert rankings(runs, best)[0].startswith("exploratory: as trained: A ")

    # results of a version that declared nothing: no baseline to trust, so every pair
    undeclared = pairwise(runs_table({"A": A, "B": B}, declared=None))
    assert undeclared["exploratory"].all() and undeclared.loc[0, "baseline"] == "A"


def test_compare_reads_the_declared_baseline_from_config_yaml(tmp_path: Path) -> None:
    """From OUT/config.yaml, or a grid's one folder up; a declared baseline without completed
    runs compares nothing there and says so."""
    from bnorder.analysis.compare import compare
    from bnorder.runs.folder import find_declared_baseline

    grid = tmp_path / "grid"
    (grid / "dropout=0.1").mkdir(parents=True)
    (grid / "config.yaml").write_text(
        yaml.safe_dump({"schemes": {"x": ["bn"], "y": ["relu"]}, "grid": {"model.dropout": [0.1]}})
    )
    assert find_declared_baseline(grid / "dropout=0.1") == "x"  # older files: first scheme
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text(
        yaml.safe_dump({"schemes": {"x": [], "y": []}, "baseline": "y", "grid": {}})
    )
    assert find_declared_baseline(plain) == "y"
    assert find_declared_baseline(tmp_path) is None

    out = Path(shutil.copytree(FIXTURES / "v0-results", tmp_path / "v0"))  # bn_relu_drop first
    config = yaml.safe_load((out / "config.yaml").read_text())
    default = compare(out, write=False).pairs
    assert set(default["baseline"]) == {"bn_relu_drop"} and not default["exploratory"].any()
    config["baseline"] = "relu_drop_bn"  # declared, never run
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    missing = compare(out, write=False)
    assert missing.pairs.empty
    assert any(
        "declared baseline relu_drop_bn has no completed runs" in p for p in missing.problems
    )
    config["baseline"] = "bn_only"
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert set(compare(out, write=False).pairs["baseline"]) == {"bn_only"}


def stats_t_sf(t: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.sf(t, df))


def test_a_damaged_config_yaml_declares_nothing(tmp_path: Path) -> None:
    """compare reads config.yaml as configs are read: not UTF-8, or nested past reason, it
    declares no baseline (every pair, exploratory) instead of a traceback."""
    from bnorder.analysis.compare import compare

    out = Path(shutil.copytree(FIXTURES / "v0-results", tmp_path / "v0"))
    for damage in (b"schemes: {caf\xe9: []}\n", b"x: " + b"[" * 100 + b"]" * 100):
        (out / "config.yaml").write_bytes(damage)
        assert compare(out, write=False).pairs["exploratory"].all()


def test_a_folder_named_like_a_formula_is_text_in_the_csv_files(tmp_path: Path) -> None:
    """A spreadsheet runs a cell that starts with = + - @ as a formula: such names get a
    leading ' in summary.csv, comparisons.csv and compare --format csv; numbers stay as
    they are, negative ones included."""
    from test_terminal import real_results

    from bnorder.analysis.compare import compare
    from bnorder.analysis.view import summary_csv

    real_results(tmp_path / '=HYPERLINK("x","y")')
    comparison = compare(tmp_path)
    for text in (
        (tmp_path / "summary.csv").read_text(),
        (tmp_path / "comparisons.csv").read_text(),
        summary_csv(comparison),
    ):
        frame = pd.read_csv(__import__("io").StringIO(text))
        assert set(frame["experiment"]) == {'\'=HYPERLINK("x","y")'}
        assert not any(str(v).startswith("=") for v in frame.to_numpy().ravel())
    pairs = pd.read_csv(tmp_path / "comparisons.csv")
    assert (pairs["diff_points"] < 0).any()  # numbers written as numbers
