"""The one table of metrics: every column of metrics.csv (what it means, its unit, where its
value comes from) and every figure compare makes of them (how a run's epochs give it, how it is
summarised over seeds, how the summary table shows it). The rest derives from here: the CSV's
columns and order and its checks, ``EpochRow``'s fields, compare's per-run and summary columns,
the tables' headers, number formats and captions, the figures' axis labels.

Adding a column: a ``Metric`` in ``METRIC_TABLE.metrics`` (at the end: metrics.csv's columns
keep their order) and, for compare to summarise it, a ``Figure`` in ``METRIC_TABLE.figures``.
A column added after the first version's is optional: older runs' files lack it, and their
rows read it as not measured."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, fields, make_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from bnorder.core.csvtext import read_columns, typed
from bnorder.core.files import atomic_write_text


@dataclass(frozen=True)
class Unit:
    """How a value is written: times ``scale``, formatted by ``spec``; ``axis``: the unit as a
    figure's axis label names it ("" where it names none)."""

    name: str
    scale: float
    spec: str
    axis: str = ""
    least: float = -math.inf  # the range a value may take, where written
    most: float = math.inf
    infinite: bool = False  # whether +inf is a value (a dead channel's shift), not an error

    def axis_label(self, words: str) -> str:
        return f"{words} ({self.axis})" if self.axis else words

    def holds(self, value: float) -> bool:
        """Whether ``value`` is one this unit can take (NaN never is: not measured is empty)."""
        finite = math.isfinite(value) or (self.infinite and value == math.inf)
        return finite and self.least <= value <= self.most


COUNT = Unit("count", 1, "d")
# an accuracy in [0, 1], shown in percent
FRACTION = Unit("fraction", 100, ".2f", "%", least=0, most=1)
POINTS = Unit("points", 100, ".2f", "points")  # a difference of fractions, in percentage points
LOSS = Unit("loss", 1, ".3f", "cross-entropy")
# the variance shift: ≥ 1, 1 meaning none, infinite where a layer's every channel is dead
RATIO = Unit("ratio", 1, ".2f", "1 = none", least=1, infinite=True)
SECONDS = Unit("seconds", 1, ".1f", "s")
RATE = Unit("rate", 1, ",.0f", "images/s")
LEARNING_RATE = Unit("learning rate", 1, ".4g")


class Source(str, Enum):
    """Where a metric's value comes from."""

    TRAIN_STEP = "train step"  # the trainer's epoch: its training steps, in train mode
    EVAL = "eval"  # the trainer's test after the epoch, in eval mode
    DIAGNOSTICS = "diagnostics"  # the fixed training sample, in eval mode (monitor.py)
    RECALIBRATION = "recalibration"  # after BN re-calibration: the last epoch's row only


@dataclass(frozen=True)
class Metric:
    """One column of metrics.csv, and of ``EpochRow``."""

    name: str
    meaning: str
    unit: Unit
    source: Source
    label: str = ""  # its words on a figure's axis, where one shows it
    required: bool = False  # in every metrics.csv since the first version; else may be empty

    @property
    def type(self) -> type:
        return int if self.unit is COUNT else float


class Take(str, Enum):
    """How a run's epochs give one figure."""

    LAST = "last"  # the last epoch's value
    BEST = "best"  # the largest over the epochs
    MEAN = "mean"  # the mean over the epochs


class Spread(str, Enum):
    """How compare summarises a figure over a group's seeds (compare.STATISTICS)."""

    T = "t"  # mean, std, median and a Student-t 95% CI for the mean
    LOG = "log"  # the same on the log scale, brought back: a ratio's spread is multiplicative
    NONE = "none"  # the mean only


class Section(str, Enum):
    """Where the summary table shows a column: sections in this order, and the report's first
    table holds the accuracies, its second the rest (titled by their words)."""

    ACCURACY = "accuracy"
    FIT = "fit"
    SHIFT = "variance shift"
    TIME = "time"


@dataclass(frozen=True)
class Shown:
    """A figure's column in the summary table: its mean (a geometric mean where summarised on
    the log scale) in the figure's unit, and its 95% CI where ``ci`` names that column. Shown
    where some row has a value; a stand-in (``instead_of``) only where that column is not."""

    header: str
    caption: str  # what the column means, after "header: "; {recalibrated}: how BN was re-estimated
    section: Section
    ci: str | None = None
    group: str | None = None  # columns a narrow terminal keeps in one part (with its CI always)
    instead_of: str | None = None


@dataclass(frozen=True)
class Figure:
    """One figure compare takes from each completed run's metrics: ``take`` of metric ``of``,
    less the last epoch's ``minus`` where that is given (a difference, in points). Summarised
    by ``spread`` where some run has it, or ``always``."""

    name: str  # its column in compare's runs; in its summary, with the statistic's suffix
    of: str
    take: Take = Take.LAST
    minus: str | None = None
    spread: Spread = Spread.T
    always: bool = False
    label: str = ""  # its words on a figure's axis
    shown: Shown | None = None


LABELS = [
    "scheme",
    "seed",
]  # metrics.csv's first columns, then a grid run's values, then the metrics


class MetricTable:
    """The metrics and the figures, in order. A plain object: a test may extend it (with
    monkeypatch) and watch a new metric reach every consumer, which all read it when used."""

    def __init__(self, metrics: tuple[Metric, ...], figures: tuple[Figure, ...]) -> None:
        self.metrics, self.figures = metrics, figures

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def csv_columns(self, grid: list[str] | tuple[str, ...] = ()) -> list[str]:
        """metrics.csv's header: scheme, seed, the grid's keys, then every metric."""
        return [*LABELS, *grid, *(m.name for m in self.metrics)]

    def names(self, *, required: bool | None = None, unit: Unit | None = None) -> list[str]:
        """The metrics' names, those required (or optional) only, those of ``unit`` only."""
        return [
            m.name
            for m in self.metrics
            if (required is None or m.required == required) and (unit is None or m.unit is unit)
        ]

    def of_source(self, source: Source) -> list[Metric]:
        return [m for m in self.metrics if m.source is source]

    def unit(self, figure: Figure) -> Unit:
        return POINTS if figure.minus else self.metric(figure.of).unit

    def axis_label(self, name: str) -> str:
        """A metric's or a figure's words on an axis, with its unit: "test accuracy (%)"."""
        found = next((f for f in self.figures if f.name == name), None)
        if found is not None:
            return self.unit(found).axis_label(found.label)
        metric = self.metric(name)
        return metric.unit.axis_label(metric.label)


_TRAIN_MODE = "in train mode (dropout and augmentation on), over the epoch's batches"
_SAMPLE = "on the fixed training sample in eval mode, as test is (train.vshift_sample)"

METRIC_TABLE = MetricTable(
    metrics=(
        Metric("epoch", "the epoch, counted from 1", COUNT, Source.TRAIN_STEP, required=True),
        Metric("train_loss", f"training loss {_TRAIN_MODE}", LOSS, Source.TRAIN_STEP,
               label="running train loss", required=True),
        Metric("train_acc", f"training accuracy {_TRAIN_MODE}", FRACTION, Source.TRAIN_STEP,
               label="running train accuracy", required=True),
        Metric("test_loss", "test loss after the epoch, in eval mode", LOSS, Source.EVAL,
               label="test loss", required=True),
        Metric("test_acc", "test accuracy after the epoch, in eval mode", FRACTION, Source.EVAL,
               label="test accuracy", required=True),
        Metric("lr", "the last learning rate the epoch used", LEARNING_RATE, Source.TRAIN_STEP,
               label="learning rate", required=True),
        Metric("epoch_seconds", "seconds the epoch took, training and testing", SECONDS,
               Source.TRAIN_STEP, label="seconds per epoch", required=True),
        Metric("images_per_second", "training images per second", RATE, Source.TRAIN_STEP,
               label="training throughput", required=True),
        Metric("train_eval_loss", f"training loss {_SAMPLE}", LOSS, Source.DIAGNOSTICS,
               label="train loss, eval mode"),
        Metric("train_eval_acc", f"training accuracy {_SAMPLE}", FRACTION, Source.DIAGNOSTICS,
               label="train accuracy, eval mode"),
        Metric("vshift_max", "the largest variance shift over the model's BN layers, on "
               "epochs it was measured", RATIO, Source.DIAGNOSTICS,
               label="largest variance shift over BN layers"),
        Metric("vshift_mean", "the mean variance shift over the model's BN layers, on epochs "
               "it was measured", RATIO, Source.DIAGNOSTICS, label="mean variance shift"),
        Metric("test_loss_recalibrated", "test loss after BN re-calibration", LOSS,
               Source.RECALIBRATION, label="test loss, BN re-estimated"),
        Metric("test_acc_recalibrated", "test accuracy after BN re-calibration", FRACTION,
               Source.RECALIBRATION, label="test accuracy, BN re-estimated"),
        Metric("vshift_max_recalibrated", "the largest variance shift after BN "
               "re-calibration", RATIO, Source.RECALIBRATION),
        Metric("vshift_mean_recalibrated", "the mean variance shift after BN re-calibration",
               RATIO, Source.RECALIBRATION),
    ),
    # summary.csv's order: those with a spread first, then those given as a mean, each in
    # this order; the summary table's, by section, in this order
    figures=(
        Figure("final_test_acc", "test_acc", always=True, label="final test accuracy",
               shown=Shown("test", "test accuracy after the last epoch as trained (BN's running "
                           "statistics), mean over seeds, with its 95% CI (Student t), none "
                           "where n < 2", Section.ACCURACY, ci="95% CI", group="test")),
        Figure("best_test_acc", "test_acc", Take.BEST, always=True),
        Figure("final_train_acc", "train_acc", spread=Spread.NONE, always=True,
               shown=Shown("train*", "the last epoch's running accuracy in train mode "
                           "(dropout, augmentation on), as these runs measured nothing in eval "
                           "mode (train.vshift_sample: 0, or an older version): not comparable "
                           "with test", Section.FIT, group="fit", instead_of="train")),
        Figure("gap_train_mode", "train_acc", minus="test_acc", always=True,
               label="train − test accuracy",
               shown=Shown("gap*", "train* − test", Section.FIT, group="fit", instead_of="gap")),
        Figure("final_train_eval_acc", "train_eval_acc", spread=Spread.NONE, always=True,
               shown=Shown("train", "accuracy on a fixed sample of training images, in eval "
                           "mode as test is", Section.FIT, group="fit")),
        Figure("gap", "train_eval_acc", minus="test_acc",
               label="train − test accuracy, eval mode",
               shown=Shown("gap", "train − test", Section.FIT, group="fit")),
        Figure("vshift_max", "vshift_max", spread=Spread.LOG,
               shown=Shown("max shift", "the largest BN variance shift after the last epoch, "
                           "geometric mean over seeds (1 = none)", Section.SHIFT)),
        Figure("vshift_mean", "vshift_mean", spread=Spread.LOG),
        Figure("test_acc_recalibrated", "test_acc_recalibrated",
               shown=Shown("re-est. test", "the same with {recalibrated}", Section.ACCURACY,
                           ci="re-est. CI", group="recalibrated")),
        Figure("recalibration_gain", "test_acc_recalibrated", minus="test_acc",
               label="test accuracy change"),
        Figure("epoch_seconds", "epoch_seconds", Take.MEAN, spread=Spread.NONE, always=True,
               shown=Shown("s/ep", "seconds per epoch", Section.TIME)),
        Figure("images_per_second", "images_per_second", Take.MEAN, spread=Spread.NONE,
               always=True),
    ),
)  # fmt: skip


# ---------------------------------------------------------------- the records of an epoch


class _Figures:
    """What every record of figures made from the table has."""

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Any:
        """From a CSV line's or a checkpoint's dict; other keys (scheme, grid values) ignored."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


class _EpochRowMethods(_Figures):
    def recalibrated(self, figures: Any) -> Any:
        """The row with the figures BN re-calibration gave (a ``Recalibrated``)."""
        return replace(self, **{f.name: getattr(figures, f.name) for f in fields(figures)})

    def to_dict(self) -> dict[str, Any]:
        """Its figures by name; the re-calibrated ones only where there are any."""
        after = {m.name for m in METRIC_TABLE.of_source(Source.RECALIBRATION)}
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if k not in after or v is not None}


def _record(name: str, metrics: list[Metric], doc: str, base: type = _Figures) -> type:
    """A frozen dataclass with a field per metric, in the table's order: the required ones
    first (the table lists them first), then the others, None where not measured."""
    spec = [
        (m.name, m.type) if m.required else (m.name, m.type | None, field(default=None))
        for m in metrics
    ]
    record = make_dataclass(name, spec, bases=(base,), frozen=True)
    record.__module__, record.__doc__ = __name__, doc  # pickled by name, as any class
    return record


EpochRow = _record(
    "EpochRow",
    list(METRIC_TABLE.metrics),
    """One epoch's figures: a line of metrics.csv (after the run's scheme, seed and grid
    values), a field per metric of ``METRIC_TABLE``. Accuracies are fractions; the optional
    figures are None where not measured.""",
    base=_EpochRowMethods,
)
SampleFigures = _record(
    "SampleFigures",
    METRIC_TABLE.of_source(Source.DIAGNOSTICS),
    "An epoch's figures on the fixed training sample (EpochRow's of these names).",
)
Recalibrated = _record(
    "Recalibrated",
    METRIC_TABLE.of_source(Source.RECALIBRATION),
    "A trained model's test figures and variance shift after BN re-calibration.",
)


# ---------------------------------------------------------------- metrics.csv and its kin

SHIFT_COLUMNS = ["epoch", "layer", "name", "running_var", "real_var", "shift", "recalibrated"]


def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The grid's dotted keys among a frame's columns (``model.dropout``…): metrics.csv and
    the tables made from it carry a grid run's values so."""
    return [c for c in frame.columns if "." in c]


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV written by bnorder, whole lines only, as a frame (see ``core.csvtext``)."""
    return pd.DataFrame({name: typed(cells) for name, cells in read_columns(path).items()})


@dataclass(frozen=True)
class RunMetrics:
    """A run's metrics.csv as checked, typed columns (``read_run_metrics``): light enough to
    read by the thousand, where a pandas frame per run would cost more than the reading."""

    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.columns["epoch"])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


def read_run_metrics(path: Path) -> RunMetrics:
    """A run's metrics.csv, checked: every required column present, numbers finite, accuracies
    in [0, 1], epochs 1, 2, 3…; the optional columns numbers where not empty. Raises ValueError
    naming what is wrong."""
    cells = read_columns(path)
    return check_metrics({name: typed(column) for name, column in cells.items()}, cells)


def check_metrics(
    columns: dict[str, list[Any]], cells: dict[str, list[str]] | None = None
) -> RunMetrics:
    """Typed columns of a run's epochs (a metrics.csv's, a checkpoint's rows) as
    ``read_run_metrics`` checks them; ``cells``: the file's text, where there is one, which
    tells a written NaN (damage) from an empty cell (not measured). Raises ValueError naming
    what is wrong."""
    required = [*LABELS, *METRIC_TABLE.names(required=True)]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    bad = [c for c in required[1:] if not all(map(_finite, columns[c]))]
    if bad:
        raise ValueError(f"missing or non-numeric values in {bad}")
    # the optional: absent in older runs, empty (NaN) where not measured, numbers where present
    present = [c for c in METRIC_TABLE.names(required=False) if c in columns]
    bad = [c for c in present if not all(map(_number, columns[c]))]
    if bad:
        raise ValueError(f"non-numeric values in {bad}")
    outside = _outside_their_unit(columns, cells)
    if any(METRIC_TABLE.metric(c).unit is FRACTION for c in outside):
        raise ValueError("accuracies outside [0, 1]")
    if outside:
        raise ValueError(f"values their unit cannot take in {outside} (NaN, or a shift below 1)")
    if columns["epoch"] != list(range(1, len(columns["epoch"]) + 1)):
        raise ValueError("epochs are not 1, 2, 3…")
    return RunMetrics(columns)


def _outside_their_unit(
    columns: dict[str, list[Any]], cells: dict[str, list[str]] | None
) -> list[str]:
    """The metric columns with a written value (an empty cell, or NaN where there is no file,
    is not measured) that their unit cannot take: accuracies outside [0, 1], a shift below 1
    or −inf, a NaN written in the file."""

    def holds(metric: Metric) -> bool:
        values = columns[metric.name]
        written = cells[metric.name] if cells is not None else [v == v for v in values]
        return all(metric.unit.holds(v) for v, shown in zip(values, written, strict=True) if shown)

    return [m.name for m in METRIC_TABLE.metrics if m.name in columns and not holds(m)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv, checked (see ``read_run_metrics``), as a frame."""
    return read_run_metrics(path).frame()


def read_shifts(path: Path) -> pd.DataFrame:
    """A run's variance_shift.csv. Raises ValueError naming what is wrong."""
    shifts = _read_csv(path)
    missing = [c for c in SHIFT_COLUMNS if c not in shifts.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    numbers = shifts[["epoch", "layer", "running_var", "real_var", "shift"]]
    if numbers.apply(pd.to_numeric, errors="coerce").isna().any().any():
        raise ValueError("missing or non-numeric values")
    if shifts["recalibrated"].dtype != bool:
        raise ValueError("recalibrated is not True/False")
    return shifts


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A whole CSV file at once, atomically."""
    lines = io.StringIO()
    writer = csv.DictWriter(lines, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, lines.getvalue())


class MetricsWriter:
    """metrics.csv, one complete, flushed line per epoch, so that the file always parses.

    Each line starts with the run's ``labels`` (scheme, seed, then its grid values, which are
    columns too). ``rows`` already done (a resumed run's) are written first, atomically, so
    that the file on disk is always either the old one or the new one.
    """

    def __init__(self, path: Path, labels: dict[str, Any], rows: list[EpochRow] = ()) -> None:
        self.labels = labels
        self.columns = METRIC_TABLE.csv_columns([k for k in labels if k not in LABELS])
        write_csv(path, [self.cells(row) for row in rows], self.columns)
        self._file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def cells(self, row: EpochRow) -> dict[str, Any]:
        """The line's values by column, as checkpoints keep them too."""
        return {**self.labels, **row.to_dict()}

    def write(self, row: EpochRow) -> None:
        self._writer.writerow(self.cells(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
