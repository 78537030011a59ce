"""The top of a report: what the runs found, before how they were made.

Which accuracy answers which question, the regime and the test family (comparison_view's
lines), the outcomes at a glance as a matrix of comparison × grid point for both accuracies
(beside the forest plot, whose names and order it shares), the verdict table in numbers, and
compare's verdict sentences grouped by grid point and accuracy. It computes nothing: each
figure and word comes from compare, verdicts or comparison_view."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bnorder.analysis.compare import Comparison
from bnorder.analysis.verdicts import METRICS, Outcome
from bnorder.analysis.view import (
    SHORT,
    family_texts,
    recalibrated_words,
    regime_texts,
    verdict_caption,
    verdict_cells,
)


@dataclass(frozen=True)
class Table:
    """A table as shown: its headers, its cells, and what it is (a heading, "" for none)."""

    headers: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclass(frozen=True)
class Matrix:
    """The verdicts at a glance: per comparison (its scheme, or "scheme vs baseline") and
    accuracy compared, the outcome at each grid point (``points``, "" without a grid)."""

    points: list[str]
    rows: list[tuple[str, list[tuple[str, list[str]]]]]  # (label, [(accuracy, outcomes)])


@dataclass(frozen=True)
class VerdictGroup:
    """compare's verdict sentences on one grid point and one accuracy, and their outcomes
    counted ("1 worse, 3 inconclusive")."""

    title: str
    tally: str
    lines: list[str]


@dataclass(frozen=True)
class Verdicts:
    """What the runs found, in the order a reader needs it: which accuracy answers which
    question, the regime and the test family, the outcomes at a glance (the forest plot is a
    figure), the same in numbers, then compare's verdicts in its own words, grouped. How far
    to trust them: confirmatory against a baseline declared before the runs, or exploratory."""

    reading: str
    regime: list[str]
    families: list[str]
    matrices: list[Matrix]  # a grid too wide for one is cut into several, alike
    numbers: list[Table]  # verdict_cells, one table per accuracy
    caption: str  # verdict_caption: what the tables' columns and outcomes mean
    groups: list[VerdictGroup]
    ranking: list[str]
    baselines: list[str]  # the declared baselines of the confirmatory families
    exploratory: bool  # some family was chosen from the data

    @property
    def folded(self) -> bool:
        """Past FOLD_VERDICTS sentences, each group is folded: the table says it already."""
        return sum(len(group.lines) for group in self.groups) > FOLD_VERDICTS


FOLD_VERDICTS = 6
MATRIX_POINTS = 6  # grid points per verdict matrix: more and it is wider than a page


def _reading(comparison: Comparison) -> str:
    """Which accuracy answers which question: the report's first paragraph."""
    trained = (
        f"Test accuracy {METRICS['final_test_acc']}, BN's running statistics as training left "
        "them, is what the network gives if deployed as it was trained: the practitioner's "
        "number, the one to choose an order by."
    )
    if "test_acc_recalibrated_mean" not in comparison.summary:
        return (
            f"{trained} These runs did not re-estimate BN after training "
            "(train.recalibrate_bn off), so they cannot tell whether a cost lies in BN's "
            "running statistics or in the placement itself."
        )
    return (
        f"Two accuracies answer two questions. {trained} Test accuracy "
        f"{METRICS['test_acc_recalibrated']} is measured once training is over, with "
        f"{recalibrated_words(comparison.runs)}. It tells where a cost lies: what "
        "re-estimating takes away lay in BN's running statistics, fixable after training by "
        "re-estimating them; what remains lies in the placement itself."
    )


def verdicts(comparison: Comparison) -> Verdicts:
    """What a report says first about ``comparison``: ``Verdicts``."""
    pairs = comparison.pairs
    lead = (_reading(comparison), regime_texts(comparison), family_texts(comparison))
    if pairs.empty:
        return Verdicts(*lead, [], [], "", [], comparison.ranking, [], exploratory=False)
    # the forest plot's names and order, so that its rows and the tables' read alike
    from bnorder.analysis.bounds import grid_order, grid_points
    from bnorder.analysis.forest import forest_order, row_labels

    pairs = grid_order(pairs).reset_index(drop=True)
    pairs = pairs.assign(point=grid_points(pairs), label=row_labels(pairs))
    order = forest_order(pairs, pairs["label"])
    confirmatory = pairs.loc[~pairs["exploratory"].astype(bool), "baseline"]
    return Verdicts(
        *lead,
        matrices=_matrices(pairs, order),
        numbers=_numbers(pairs),
        caption=verdict_caption(comparison),
        groups=_groups(pairs),
        ranking=comparison.ranking,
        baselines=sorted(set(confirmatory)),
        exploratory=bool(pairs["exploratory"].astype(bool).any()),
    )


def _matrices(pairs: pd.DataFrame, order: list[str]) -> list[Matrix]:
    """Outcome by comparison (rows, in ``order``) and accuracy × grid point (columns), cut
    into matrices of MATRIX_POINTS grid points at most."""
    points = list(dict.fromkeys(pairs["point"]))
    metrics = [m for m in METRICS if m in set(pairs["metric"])]
    outcome = pairs.set_index(["label", "metric", "point"])["outcome"].to_dict()
    matrices = []
    for start in range(0, len(points), MATRIX_POINTS):
        shown = points[start : start + MATRIX_POINTS]
        rows = [
            (label, [(SHORT[m], [outcome.get((label, m, p), "") for p in shown]) for m in metrics])
            for label in order
        ]
        matrices.append(Matrix(shown, rows))
    return matrices


def _numbers(pairs: pd.DataFrame) -> list[Table]:
    """verdict_cells' table, one table per accuracy (together they are wider than a page):
    the columns that name a comparison, then that accuracy's."""
    headers, rows = verdict_cells(pairs)
    keys = headers.index("vs") + 1
    metrics = [m for m in METRICS if m in set(pairs["metric"])]
    width = (len(headers) - keys) // len(metrics)
    tables = []
    for i, metric in enumerate(metrics):
        columns = [*range(keys), *range(keys + i * width, keys + (i + 1) * width)]
        title = f"{METRICS[metric][0].upper()}{METRICS[metric][1:]}"
        tables.append(
            Table([headers[c] for c in columns], [[r[c] for c in columns] for r in rows], title)
        )
    return tables


def _groups(pairs: pd.DataFrame) -> list[VerdictGroup]:
    """compare's sentences by grid point (in the grid's order), then accuracy, with their
    outcomes counted."""
    points = {point: i for i, point in enumerate(dict.fromkeys(pairs["point"]))}
    ranks = {metric: i for i, metric in enumerate(METRICS)}
    keys = [pairs["point"].map(points), pairs["metric"].map(ranks).fillna(len(ranks))]
    groups = []
    for _, rows in pairs.groupby(keys, sort=True):
        point, label = rows["point"].iloc[0], str(rows["metric_label"].iloc[0])
        counts = rows["outcome"].value_counts()
        tally = ", ".join(f"{counts[o.value]} {o.value}" for o in Outcome if o.value in counts)
        title = f"{point}, {label}" if point else label[0].upper() + label[1:]
        groups.append(VerdictGroup(title, tally, list(rows["verdict"])))
    return groups
