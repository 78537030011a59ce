"""The result tables of the README and of docs/ say what the committed results folders hold,
number for number.

Every table of the README's "An example result" and of the docs' result pages follows a marker
naming its source and kind:

    <!-- table: accuracy results/reference/cpu/dropout-rates/summary.csv final_test_acc -->
    <!-- table: verdicts results/reference/cpu/long-training/comparisons.csv final_test_acc -->

``accuracy``: a row per scheme, a column per grid value, the metric's mean over seeds with its
95% CI, in percent. ``verdicts``: a row per scheme, a column per grid value, the difference
from the baseline in points with its 95% CI and the verdict. The test makes each table again
from the file and compares it with the page's, cell for cell; and for each folder that holds
its runs, it checks that the committed summary.csv and comparisons.csv are compare's output
today (so the pages, the CSVs and the runs cannot drift apart).

``python tests/test_readme_results.py`` prints every marked table as it should read.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# every page that shows results: the front page, then the manual (docs/, built by mkdocs)
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# where every table is a result: the README's example, and these pages of docs/ whole
RESULT_PAGES = ["docs/reference-studies.md", "docs/variance-shift.md"]
MARKER = re.compile(r"<!-- table: (accuracy|verdicts) (\S+) (\S+) -->")
SECTION = "## An example result"


def _grid(frame: pd.DataFrame) -> str | None:
    dotted = [c for c in frame.columns if "." in c]
    return dotted[0] if dotted else None


def _value(value: float) -> str:
    return f"{value:g}"


def accuracy_table(summary: pd.DataFrame, metric: str) -> list[list[str]]:
    """Header and rows: scheme, then per grid value "mean (low–high)" in percent."""
    grid = _grid(summary)
    values = sorted(summary[grid].unique()) if grid else [None]
    header = [
        "scheme",
        *(f"{grid.split('.')[-1]} {_value(v)}" if grid else "all runs" for v in values),
    ]
    rows = [header]
    order = summary.sort_values(f"{metric}_mean", ascending=False)["scheme"].unique()
    for scheme in order:
        cells = [f"`{scheme}`"]
        for value in values:
            row = summary[
                (summary["scheme"] == scheme) & (summary[grid] == value if grid else True)
            ]
            cells.append(_accuracy_cell(row.iloc[0], metric) if len(row) else "—")
        rows.append(cells)
    return rows


def _accuracy_cell(row: pd.Series, metric: str) -> str:
    mean, low, high = (row[f"{metric}_{k}"] * 100 for k in ("mean", "ci_low", "ci_high"))
    if math.isnan(low):
        return f"{mean:.1f}"
    return f"{mean:.1f} ({low:.1f}–{high:.1f})"


def verdicts_table(pairs: pd.DataFrame, metric: str) -> list[list[str]]:
    """Header and rows: "scheme vs baseline", then per grid value the difference in points,
    its 95% CI and the verdict."""
    pairs = pairs[pairs["metric"] == metric]
    grid = _grid(pairs)
    values = sorted(pairs[grid].unique()) if grid else [None]
    header = ["vs", *(f"{grid.split('.')[-1]} {_value(v)}" if grid else "all runs" for v in values)]
    rows = [header]
    for (scheme, baseline), group in pairs.groupby(["scheme", "baseline"], sort=False):
        cells = [f"`{scheme}` vs `{baseline}`"]
        for value in values:
            row = group[group[grid] == value] if grid else group
            cells.append(_verdict_cell(row.iloc[0]) if len(row) else "—")
        rows.append(cells)
    return rows


def _verdict_cell(row: pd.Series) -> str:
    diff, low, high = row["diff_points"], row.get("diff_ci_low"), row.get("diff_ci_high")
    if low is None or pd.isna(low):
        return f"{diff:+.1f}, {row['outcome']}"
    return f"{diff:+.1f} ({low:+.1f} to {high:+.1f}), {row['outcome']}"


def expected_table(kind: str, path: str, metric: str) -> list[list[str]]:
    frame = pd.read_csv(ROOT / path)
    return accuracy_table(frame, metric) if kind == "accuracy" else verdicts_table(frame, metric)


def as_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def marked_tables(text: str) -> list[tuple[tuple[str, str, str], list[list[str]]]]:
    """Each marker with the markdown table under it, as cells."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = MARKER.fullmatch(line.strip())
        if match is None:
            continue
        table = []
        for row in lines[index + 1 :]:
            if not row.startswith("|"):
                break
            if not re.fullmatch(r"\|(-+\|)+", row.replace(" ", "")):
                table.append([cell.strip() for cell in row.strip().strip("|").split("|")])
        found.append((match.groups(), table))
    return found


def test_every_result_table_of_the_readme_and_docs_matches_its_results_folder() -> None:
    # the README's one study (both accuracies, summaries and verdicts), the short study and
    # the variance-shift run in docs/
    assert len(marked_tables(README.read_text())) == 4
    assert sum(len(marked_tables(page.read_text())) for page in PAGES) >= 10
    for page in PAGES:
        name = page.relative_to(ROOT)
        for (kind, path, metric), table in marked_tables(page.read_text()):
            assert (ROOT / path).is_file(), f"{path}: named by {name}, not committed"
            expected = expected_table(kind, path, metric)
            assert table == expected, f"{name}: {kind} table of {path} ({metric}) drifted:\n" + (
                as_markdown(expected)
            )


@pytest.mark.parametrize("page", ["README.md", *RESULT_PAGES])
def test_no_result_table_goes_unchecked(page: str) -> None:
    text = (ROOT / page).read_text()
    if page == "README.md":
        text = text[text.index(SECTION) :]
        text = text[: text.index("\n## ")]
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|") and not lines[index - 1].startswith("|"):
            assert MARKER.fullmatch(lines[index - 1].strip()), f"{page}: unchecked table at: {line}"


@pytest.mark.parametrize(
    ("folder", "baseline", "suffix"),
    [
        ("results/reference/cpu/dropout-rates", None, ""),
        ("results/reference/cpu/dropout-rates", "bn_only", "-vs-bn_only"),
        ("results/reference/cpu/long-training", None, ""),
    ],
)
def test_committed_csvs_are_what_compare_says_today(
    folder: str, baseline: str | None, suffix: str
) -> None:
    from bnorder.analysis.compare import compare

    comparison = compare(ROOT / folder, baseline=baseline, write=False)
    committed = pd.read_csv(ROOT / folder / f"comparisons{suffix}.csv")
    fresh = pd.read_csv(pd.io.common.StringIO(comparison.pairs.to_csv(index=False)))
    pd.testing.assert_frame_equal(committed, fresh, check_exact=False, rtol=1e-9)
    if not suffix:
        summary = pd.read_csv(ROOT / folder / "summary.csv")
        fresh = pd.read_csv(pd.io.common.StringIO(comparison.summary.to_csv(index=False)))
        pd.testing.assert_frame_equal(summary, fresh, check_exact=False, rtol=1e-9)


def rewritten(text: str) -> str:
    """``text`` with the table under every marker made again from its file (the prose around
    them still wants reading by hand)."""
    out, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        index += 1
        match = MARKER.fullmatch(line.strip())
        if match is None:
            continue
        while index < len(lines) and lines[index].startswith("|"):
            index += 1
        out.append(as_markdown(expected_table(*match.groups())))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    # python tests/test_readme_results.py [--write]: print the tables, or write them in
    for page in PAGES:
        if "--write" in sys.argv:
            page.write_text(rewritten(page.read_text()))
        for (kind, path, metric), _ in marked_tables(page.read_text()):
            print(f"<!-- {page.relative_to(ROOT)} -->\n<!-- table: {kind} {path} {metric} -->")
            print(as_markdown(expected_table(kind, path, metric)) + "\n")
