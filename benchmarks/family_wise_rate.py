"""The family-wise false-positive rate of compare's verdicts, measured by simulation.

    python benchmarks/family_wise_rate.py [--sweeps 1000] [--designs 5x5,5x3,3x5] [--seed 0]

Each simulated sweep has every scheme drawn from one distribution (a true null): a seed's own
luck, shared by every scheme (sd 1 point), plus each run's noise (sd 0.5 points), so seeds pair
up as in a real sweep. For each design (schemes × seeds) it prints the share of sweeps with at
least one significant verdict after Holm (α = 0.05), and its Monte-Carlo standard error, for
  best-mean   every scheme against the one with the best mean (compare's default before the
              baseline was declared): the baseline is chosen after looking at the data
  declared    every scheme against the first one, declared before the data (the default now)
  best        ``--baseline best``: every pair, Holm over k(k−1)/2, marked exploratory
The sweeps are experiments of one runs table, tested by compare's own ``pairwise``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from bnorder.analysis.verdicts import pairwise

ALPHA = 0.05


def null_sweeps(rng: np.random.Generator, sweeps: int, schemes: int, seeds: int) -> pd.DataFrame:
    """``sweeps`` experiments of ``schemes`` × ``seeds`` runs, every scheme alike; the first
    scheme, s0, declared as the baseline."""
    seed_effect = rng.normal(0, 0.01, size=(sweeps, 1, seeds))
    accuracy = 0.8 + seed_effect + rng.normal(0, 0.005, size=(sweeps, schemes, seeds))
    sweep, scheme, seed = np.indices(accuracy.shape).reshape(3, -1)
    return pd.DataFrame(
        {
            "experiment": [f"sweep{i:04d}" for i in sweep],
            "config": "c",
            "scheme": [f"s{j}" for j in scheme],
            "seed": seed,
            "declared_baseline": "s0",
            "final_test_acc": accuracy.reshape(-1),
        }
    )


def false_positive_rate(pairs: pd.DataFrame) -> float:
    """The share of sweeps with at least one significant comparison."""
    return float(pairs.groupby("experiment")["significant"].any().mean())


def rates(runs: pd.DataFrame) -> dict[str, float]:
    means = runs.groupby(["experiment", "scheme"])["final_test_acc"].mean()
    best = means.groupby(level="experiment").idxmax().map(lambda key: key[1])
    chosen = runs.assign(declared_baseline=runs["experiment"].map(best))
    return {
        "best-mean": false_positive_rate(pairwise(chosen, alpha=ALPHA)),
        "declared": false_positive_rate(pairwise(runs, alpha=ALPHA)),
        "best": false_positive_rate(pairwise(runs, baseline="best", alpha=ALPHA)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--designs", default="5x5,5x3,3x5", help="schemes x seeds, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    se = math.sqrt(ALPHA * (1 - ALPHA) / args.sweeps)
    print(f"{args.sweeps} null sweeps per design, α = {ALPHA}, Monte-Carlo SE ≈ {se:.3f}")
    print(f"{'design':>8}  {'best-mean':>9}  {'declared':>8}  {'best':>6}")
    for design in args.designs.split(","):
        schemes, seeds = (int(n) for n in design.split("x"))
        runs = null_sweeps(np.random.default_rng(args.seed), args.sweeps, schemes, seeds)
        found = rates(runs)
        cells = "  ".join(
            f"{found[k]:>{w}.1%}" for k, w in (("best-mean", 9), ("declared", 8), ("best", 6))
        )
        print(f"{design:>8}  {cells}")


if __name__ == "__main__":
    main()
