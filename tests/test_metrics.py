"""The one table of metrics (runs/metrics.py): metrics.csv keeps its columns, and a metric
added to the table alone reaches metrics.csv's header and checks, compare's runs and summary,
the summary table (header, format, CI, caption) and the figures' axis labels (issue 25)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from test_terminal import real_results

from bnorder.analysis import report, view
from bnorder.analysis.compare import compare
from bnorder.runs.metrics import (
    FRACTION,
    METRIC_TABLE,
    EpochRow,
    Figure,
    Metric,
    MetricsWriter,
    Recalibrated,
    SampleFigures,
    Section,
    Shown,
    Source,
    read_metrics,
)

# metrics.csv as every version wrote it: old folders read, committed results stay as they are
TODAYS_HEADER = (
    "scheme,seed,model.dropout,epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,"
    "images_per_second,train_eval_loss,train_eval_acc,vshift_max,vshift_mean,"
    "test_loss_recalibrated,test_acc_recalibrated,vshift_max_recalibrated,"
    "vshift_mean_recalibrated"
)


def header(path: Path) -> str:
    return path.read_text().splitlines()[0]


def test_metrics_csv_keeps_its_columns_and_their_order(tmp_path: Path) -> None:
    labels = {"scheme": "bn_only", "seed": 0, "model.dropout": 0.1}
    row = EpochRow(1, 2.0, 0.25, 2.1, 0.2, 0.05, 3.0, 100.0, train_eval_acc=0.3)
    with MetricsWriter(tmp_path / "metrics.csv", labels, [row]):
        pass
    assert header(tmp_path / "metrics.csv") == TODAYS_HEADER
    line = (tmp_path / "metrics.csv").read_text().splitlines()[1]
    assert line == "bn_only,0,0.1,1,2.0,0.25,2.1,0.2,0.05,3.0,100.0,,0.3,,,,,,"


def test_the_records_of_figures_follow_the_table() -> None:
    """EpochRow has a field per metric in the CSV's order (positional construction keeps
    working); the monitor's records have those of their source, and fill an EpochRow."""
    names = [f.name for f in dataclasses.fields(EpochRow)]
    assert names == TODAYS_HEADER.split(",")[3:]
    assert [f.name for f in dataclasses.fields(SampleFigures)] == names[8:12]
    row = EpochRow(1, 2.0, 0.25, 2.1, 0.2, 0.05, 3.0, 100.0)
    after = row.recalibrated(Recalibrated(1.5, 0.4, 2.0, 1.5))
    assert after.test_acc_recalibrated == 0.4 and after.test_acc == 0.2
    assert "test_acc_recalibrated" not in row.to_dict()  # written only where measured
    assert after.to_dict()["vshift_max_recalibrated"] == 2.0


DEAD = Metric(
    "dead_units",
    "the fraction of ReLU units that never fired in the epoch",
    FRACTION,
    Source.TRAIN_STEP,
    label="dead units",
)
DEAD_FIGURE = Figure(
    "final_dead_units",
    "dead_units",
    label="dead units after the last epoch",
    shown=Shown("dead", "ReLU units that never fired in the last epoch", Section.FIT, ci="dead CI"),
)


@pytest.fixture
def with_dead_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metric that does not exist, added to the table and nowhere else."""
    monkeypatch.setattr(METRIC_TABLE, "metrics", (*METRIC_TABLE.metrics, DEAD))
    monkeypatch.setattr(METRIC_TABLE, "figures", (*METRIC_TABLE.figures, DEAD_FIGURE))


def with_column(root: Path, values: dict[str, float | str]) -> Path:
    """Every run's metrics.csv below ``root`` with a dead_units column, its scheme's value."""
    for path in root.glob("*/seed*/metrics.csv"):
        frame = pd.read_csv(path)
        frame.assign(dead_units=values[str(frame["scheme"][0])]).to_csv(path, index=False)
    return root


def test_a_metric_added_to_the_table_reaches_every_consumer(
    tmp_path: Path, with_dead_units: None
) -> None:
    with MetricsWriter(tmp_path / "metrics.csv", {"scheme": "s", "seed": 0}):
        pass
    assert header(tmp_path / "metrics.csv").endswith(",vshift_mean_recalibrated,dead_units")
    root = real_results(tmp_path / "runs")
    schemes = {p.name for p in root.iterdir()}
    values = {scheme: 0.125 * (i + 1) for i, scheme in enumerate(sorted(schemes))}
    comparison = compare(with_column(root, values), write=False)
    assert set(comparison.runs["final_dead_units"]) == set(values.values())
    summary = comparison.summary.set_index("scheme")
    for scheme, value in values.items():
        assert summary.loc[scheme, "final_dead_units_mean"] == pytest.approx(value)
        assert summary.loc[scheme, "final_dead_units_ci_low"] == pytest.approx(value)
    headers, rows = view.summary_cells(comparison.summary)
    # in its section: after the fit columns, before the variance shift and the time
    assert headers[-5:] == ["gap", "dead", "dead CI", "max shift", "s/ep"]
    first = comparison.summary["scheme"].iloc[0]
    cells = dict(zip(headers, rows[0], strict=True))
    assert cells["dead"] == f"{values[first] * 100:.2f}"  # a fraction, in percent
    assert cells["dead CI"] == f"{values[first] * 100:.2f}–{values[first] * 100:.2f}"
    caption = view.summary_caption(comparison.summary)
    assert "dead: ReLU units that never fired in the last epoch; max shift:" in caption
    assert METRIC_TABLE.axis_label("final_dead_units") == "dead units after the last epoch (%)"
    accuracy, fit = report._summary_tables(comparison.summary)  # the report's two tables
    assert "dead" not in accuracy.headers and "dead CI" in fit.headers
    assert fit.title == "Fit, variance shift and time"


def test_a_metric_added_later_is_optional_and_checked(
    tmp_path: Path, with_dead_units: None
) -> None:
    """Older runs lack the column: they read, and the summary table goes without it. Where
    the column is, its values are checked as the table's unit says (a fraction in [0, 1])."""
    root = real_results(tmp_path / "runs")
    headers, _ = view.summary_cells(compare(root, write=False).summary)
    assert "dead" not in headers
    run = next(root.glob("*/seed*"))
    with_column(root, {p.name: 1.5 for p in root.iterdir()})
    with pytest.raises(ValueError, match=r"accuracies outside \[0, 1\]"):
        read_metrics(run / "metrics.csv")
    with_column(root, {p.name: "many" for p in root.iterdir()})
    with pytest.raises(ValueError, match=r"non-numeric values in \['dead_units'\]"):
        read_metrics(run / "metrics.csv")


@pytest.mark.parametrize(
    ("written", "refused"),
    [("-inf", True), ("nan", True), ("0.5", True), ("inf", False), ("", False), ("1.25", False)],
)
def test_a_diagnostic_is_checked_as_its_unit_says(
    tmp_path: Path, written: str, refused: bool
) -> None:
    """A variance shift is ≥ 1, infinite only where a layer's every channel is dead; an empty
    cell is not measured; a written NaN, −inf or a shift below 1 is a damaged file."""
    run = next(real_results(tmp_path / "runs").glob("*/seed*"))
    path = run / "metrics.csv"
    lines = path.read_text().splitlines()
    column = lines[0].split(",").index("vshift_max")
    cells = lines[1].split(",")
    cells[column] = written
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    if refused:
        with pytest.raises(ValueError, match=r"their unit cannot take in \['vshift_max'\]"):
            read_metrics(path)
    else:
        read_metrics(path)
