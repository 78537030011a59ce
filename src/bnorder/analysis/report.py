"""One self-contained file that tells what a results folder found: ``bnorder report``.

Everything in it comes from ``compare`` (the summary, the verdicts, the runs left out), from
``plots`` (the figures, drawn into memory) and from the runs' ``run.json`` (provenance): the
report computes no statistic of its own. Jinja2 lays it out from the templates shipped beside
this module; the HTML form embeds its figures as PNG data URIs and its CSS inline, so it opens
offline, on a phone and on paper; the markdown form writes its PNGs beside it."""

from __future__ import annotations

import base64
import math
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pandas as pd

from bnorder import __version__
from bnorder.analysis.answer import Table, Verdicts, verdicts
from bnorder.analysis.compare import Comparison, compare
from bnorder.analysis.verdicts import FamilyScope
from bnorder.analysis.view import summary_caption, summary_cells, summary_columns
from bnorder.core.durations import duration
from bnorder.core.errors import BnorderError
from bnorder.core.files import atomic_write, atomic_write_text, read_bounded, writing_to
from bnorder.data.catalog import DATASETS
from bnorder.data.options import DataConfig
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import describe
from bnorder.runs.config import CONFIG_BYTES
from bnorder.runs.folder import CONFIG_FILE, find_runs, read_experiment_config
from bnorder.runs.metrics import Section, grid_columns
from bnorder.runs.records import RunInfo


class ReportFormat(str, Enum):
    """The forms a report takes: one HTML file, or markdown with its PNGs beside it."""

    html = "html"
    markdown = "markdown"


SUFFIXES = {ReportFormat.html: (".html", ".htm"), ReportFormat.markdown: (".md",)}


class ReportError(BnorderError, ValueError):
    """A report that cannot be written where it was asked for; the message names the path."""


@dataclass(frozen=True)
class FigureImage:
    """One figure, drawn: its file name (as ``compare --plots`` names it), what it shows, and
    its PNG bytes."""

    name: str
    title: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Question:
    """What was asked: the schemes in the order each applies its ops, and on what."""

    schemes: list[tuple[str, str]]  # (name, "CONV → BN → ACT → DROPOUT")
    seeds: int
    epochs: str
    data: str  # "2,500 training and 1,000 test images", or "" where runs did not say
    grid: list[str]  # the keys a grid swept
    dataset: str = ""  # "CIFAR-10", "CIFAR-10 and SVHN"; "" where no run kept its config
    network: str = ""  # "a VGG-style CNN", "a VGG-style CNN and a Wide ResNet"; "" likewise


@dataclass(frozen=True)
class LeftOut:
    """A run not averaged in: where it is, how it stands, and why."""

    run: str
    status: str
    error: str


@dataclass(frozen=True)
class Fact:
    """One line of provenance: a field and its value in words; where the runs took many
    values, its count in words and each value with how many runs had it (``items``, in the
    order first used), for a list folded away: a grid of dirty checkouts would fill a page."""

    key: str
    value: str
    items: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Reproduce:
    """One sweep's config file, its text, and the command that trains that sweep again."""

    config: str
    text: str
    command: str


@dataclass(frozen=True)
class Report:
    """Everything a report shows, in the order it shows it."""

    folder: str
    created: str
    question: Question
    verdicts: Verdicts
    summary: list[Table]  # the accuracies, then the fit and cost: one is wider than a page
    caption: str
    figures: dict[str, FigureImage]  # by file name; a figure absent: its data was not measured
    left_out: list[LeftOut]
    problems: list[str]
    provenance: list[Fact]
    reproduce: list[Reproduce] = field(default_factory=list)


TITLES = {
    "test_accuracy.png": "Test accuracy per epoch",
    "loss.png": "Train and test loss per epoch",
    "final_accuracy.png": "Final test accuracy",
    "gap.png": "Generalisation gap",
    "vshift_by_layer.png": "Variance shift by BN layer",
    "vshift_over_epochs.png": "Variance shift over epochs",
    "recalibration_gain.png": "Gain from BN re-calibration",
    "grid_accuracy.png": "Final test accuracy by scheme and grid point",
    "forest.png": "Each scheme's difference from its baseline, with its 95% CI, on both "
    "accuracies, against the equivalence margin",
}


def build_report(
    root: str | Path,
    *,
    baseline: str | None = None,
    all_pairs: bool = False,
    scope: FamilyScope = FamilyScope.study,
) -> Report:
    """The report on every run below ``root``, as ``compare`` sees it (with the same
    ``baseline``, ``all_pairs`` and ``scope``), its figures drawn; writes nothing. NoRunsError
    where ``root`` is no folder or holds no completed run."""
    comparison = compare(root, baseline=baseline, all_pairs=all_pairs, scope=scope, write=False)
    records, _ = find_runs(root)  # its problems are the comparison's already
    infos = [record.info for record in records]
    return Report(
        folder=str(root),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        question=_question(comparison, infos),
        verdicts=verdicts(comparison),
        summary=_summary_tables(comparison.summary),
        caption=summary_caption(comparison.summary),
        figures=_figures(comparison),
        left_out=_left_out(comparison),
        problems=comparison.problems,
        provenance=_provenance(infos),
        reproduce=_reproduce({record.path.parent.parent for record in records}),
    )


FIRST = (None, Section.ACCURACY)  # the first table's sections: the run counts, the accuracies


def _summary_tables(summary: pd.DataFrame) -> list[Table]:
    """The summary as two tables, each row named alike in both (its columns up to scheme):
    the accuracies (with the run counts), then the other sections: how the runs fit (train,
    gap), their variance shift and time, titled by the sections they show."""
    columns = summary_columns(summary)
    headers, rows = summary_cells(summary)
    keys = headers.index("scheme") + 1
    second = [i for i, c in enumerate(columns) if i >= keys and c.section not in FIRST]
    first = [i for i in range(len(columns)) if i not in second]
    sections = dict.fromkeys(columns[i].section.value for i in second)
    tables = []
    for title, shown in (
        ("Accuracy", first),
        (_words(sections).capitalize(), [*range(keys), *second]),
    ):
        tables.append(
            Table([headers[i] for i in shown], [[row[i] for i in shown] for row in rows], title)
        )
    return tables


def _figures(comparison: Comparison) -> dict[str, FigureImage]:
    # matplotlib only once a report is built: the command line imports this module to start
    from bnorder.analysis.figures import plot_pngs, png_bytes
    from bnorder.analysis.plots import grid_heatmap

    pngs = plot_pngs(comparison)
    if grid_columns(comparison.summary):
        pngs["grid_accuracy.png"] = png_bytes(lambda to: grid_heatmap(comparison, to))
    return {name: FigureImage(name, TITLES.get(name, name), png) for name, png in pngs.items()}


def _question(comparison: Comparison, infos: list[RunInfo]) -> Question:
    orders: dict[str, str] = {}
    for info in infos:  # every scheme, even one whose runs all failed
        if info.ops or info.head:
            orders.setdefault(info.scheme, describe(info.order))
    schemes = sorted(set(comparison.summary["scheme"]) | {info.scheme for info in infos})
    epochs = sorted({int(e) for e in comparison.summary["epochs"].dropna()})
    images = {(i.train_images, i.test_images) for i in infos if i.train_images}
    data = ""
    if len(images) == 1:
        train, test = images.pop()
        data = f"{train:,} training and {test:,} test images"
    return Question(
        schemes=[(name, orders.get(name, "order not recorded")) for name in schemes],
        seeds=len({info.seed for info in infos}),
        epochs=" or ".join(str(e) for e in epochs),
        data=data,
        grid=grid_columns(comparison.summary),
        dataset=_words(_dataset_name(data) for data in _settings(infos, "data", DataConfig)),
        network=_words(_network_name(model) for model in _settings(infos, "model", ModelConfig)),
    )


# model.arch in words, for the question: what a reader calls each network
NETWORKS = {
    "vgg": "a VGG-style CNN",
    "resnet": "a pre-activation ResNet",
    "wrn": "a Wide ResNet",
    "densenet": "a DenseNet-BC",
}


def _settings(infos: list[RunInfo], section: str, model: type) -> Iterable[dict[str, Any]]:
    """Each run's config ``section`` with ``model``'s defaults under it: a version from before
    a key knew only its default (CIFAR-10, the VGG-style net). Runs that kept no config:
    none."""
    defaults = {name: f.default for name, f in model.model_fields.items()}
    for info in infos:
        found = info.config.get(section) if info.config else None
        if info.config:
            yield {**defaults, **(found if isinstance(found, dict) else {})}


def _dataset_name(data: dict[str, Any]) -> str:
    known = DATASETS.get(str(data["dataset"]))
    title = known.title if known else str(data["dataset"])
    return f"{title} at {data['root']}" if data["dataset"] == "folder" else title


def _network_name(model: dict[str, Any]) -> str:
    return NETWORKS.get(str(model["arch"]), f"a {model['arch']} network")


def _words(values: Iterable[str]) -> str:
    """The different values in the order met, as a sentence lists them: "a", "a and b",
    "a, b and c"; "" for none."""
    seen = list(dict.fromkeys(values))
    return f"{', '.join(seen[:-1])} and {seen[-1]}" if len(seen) > 1 else "".join(seen)


def _left_out(comparison: Comparison) -> list[LeftOut]:
    return [
        LeftOut(
            run=str(Path(run.experiment) / run.scheme / f"seed{run.seed}"),
            status=str(run.status),
            error=str(run.error or ""),
        )
        for run in comparison.incomplete.itertuples()
    ]


FOLD = 2  # past this many different values, a field is counted and its values listed apart


def _distinct(
    key: str, infos: list[RunInfo], value: Callable[[RunInfo], Any], noun: str = "values"
) -> Fact:
    """The different values a field takes over the runs: joined where few, else counted
    ("7 different revisions") with each value and its runs, in the order first used."""
    runs: dict[str, int] = {}
    for info in sorted(infos, key=lambda i: i.started_at or ""):
        found = value(info)
        if found not in (None, ""):
            runs[str(found)] = runs.get(str(found), 0) + 1
    if len(runs) <= FOLD:
        return Fact(key, ", ".join(sorted(runs)) or "not recorded")
    return Fact(key, f"{len(runs)} different {noun}", list(runs.items()))


def _revisions(infos: list[RunInfo]) -> Fact:
    """The git revisions, and where there are many, how many had uncommitted changes: a run
    of a dirty checkout is reproducible only as far as its diff was kept."""
    fact = _distinct("git revision", infos, lambda i: i.git_revision, "revisions")
    dirty = sum(name.endswith("-dirty") for name, _ in fact.items)
    if not dirty:
        return fact
    return Fact(fact.key, f"{fact.value}, {dirty} with uncommitted changes (-dirty)", fact.items)


def _provenance(infos: list[RunInfo]) -> list[Fact]:
    """Where, when and with what the runs were made, each field's different values joined
    or, where many, counted and listed."""
    walls = [i.wall_seconds for i in infos if i.wall_seconds and math.isfinite(i.wall_seconds)]
    started = [i.started_at for i in infos if i.started_at]
    finished = [i.finished_at for i in infos if i.finished_at]
    span = f"{min(started)} to {max(finished)}" if started and finished else "not recorded"
    timed = f"{duration(sum(walls))} of training over {len(walls)} runs" if walls else ""
    return [
        Fact("runs found", str(len(infos))),
        Fact("wall time", timed or "not recorded"),
        Fact("started – finished", span),
        _distinct("device", infos, lambda i: i.device and f"{i.device_name} ({i.device})"),
        _distinct("host", infos, lambda i: i.host),
        _revisions(infos),
        _distinct("bnorder", infos, lambda i: i.bnorder, "versions"),
        _distinct("torch", infos, lambda i: i.torch, "versions"),
        _distinct("torchvision", infos, lambda i: i.torchvision, "versions"),
        _distinct("Python", infos, lambda i: i.python, "versions"),
        _distinct("platform", infos, lambda i: i.platform),
        _distinct("data", infos, lambda i: i.data_source, "sources"),
        Fact("report by", f"bnorder {__version__}"),
    ]


def _sweep_config(output: Path) -> Path | None:
    """The config.yaml of the sweep that wrote ``output``: its own, or for a grid point the
    grid's, one folder up (as compare finds the declared baseline)."""
    for folder, grid in ((output, False), (output.parent, True)):
        config = read_experiment_config(folder)
        if config is not None and bool(config.get("grid")) == grid:
            return folder / CONFIG_FILE
    return None


def _reproduce(outputs: Iterable[Path]) -> list[Reproduce]:
    """Per sweep config below the folder: its text and the command that trains it again into
    the same folder (``--out`` where the config names another, or a relative path)."""
    found: list[Reproduce] = []
    for path in sorted({p for p in map(_sweep_config, outputs) if p is not None}):
        config = read_experiment_config(path.parent) or {}
        command = ["bnorder", "run", str(path)]
        declared = config.get("output")
        if not isinstance(declared, str) or Path(declared).resolve() != path.parent.resolve():
            command += ["--out", str(path.parent)]
        text = read_bounded(path, CONFIG_BYTES, "config").decode(errors="replace")
        found.append(Reproduce(str(path), text, shlex.join(command)))
    return found


def _environment(finalize: Callable[[Any], Any] | None = None) -> jinja2.Environment:
    """The templates beside this module; HTML ones escape every value (scheme names, grid
    values and errors are the user's text); ``finalize``: how a markdown one escapes them."""
    environment = jinja2.Environment(
        finalize=finalize,
        loader=jinja2.PackageLoader("bnorder", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["md_cell"] = _markdown_cell
    return environment


def render_html(report: Report) -> str:
    """The report as one HTML page: CSS inline, figures as data URIs, no external resource."""
    return _environment().get_template("report.html.j2").render(report=report)


def render_markdown(report: Report, figure_prefix: str = "") -> str:
    """The report as markdown; each figure is linked as ``figure_prefix + name``."""
    template = _environment(finalize=_markdown_text).get_template("report.md.j2")
    return template.render(report=report, prefix=figure_prefix)


MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _markdown_text(value: Any) -> Any:
    """A value as markdown shows it literally: markdown passes HTML through, so a scheme named
    ``<script>…`` or ``<img onerror=…>`` would run where report.md is shown, and ``](`` would
    make a name a link. The template's own markup (its macros' output, marked safe) stays."""
    if not isinstance(value, str) or isinstance(value, markupsafe.Markup):
        return value
    return value.translate(MARKDOWN_ESCAPES).replace("](", "]\\(")


def _markdown_cell(text: Any) -> str:
    """A value fit for a markdown table cell: a pipe or a line break would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def default_output(root: str | Path, fmt: ReportFormat) -> Path:
    return Path(root) / ("report.html" if fmt is ReportFormat.html else "report.md")


def check_output(output: Path, fmt: ReportFormat) -> None:
    """ReportError where ``output`` is not a file named for ``fmt``: a report never writes
    over run.json, metrics.csv or any other results file, whatever -o says."""
    if output.suffix.lower() not in SUFFIXES[fmt]:
        wanted = " or ".join(SUFFIXES[fmt])
        raise ReportError(f"{output}: a {fmt.value} report is written to a {wanted} file")
    if output.is_dir():
        raise ReportError(f"{output}: a folder; name the report's file")
    folder = next((p for p in output.parents if p.exists()), Path("."))
    if not folder.is_dir():  # said now, not after the figures are drawn
        raise ReportError(f"{folder}: not a folder, so {output} cannot be written")


def save_report(report: Report, output: Path, fmt: ReportFormat) -> list[Path]:
    """Write ``report`` to ``output`` (markdown: its PNGs beside it, named after it, so that
    two reports in one folder keep their own); returns every path written, the report first.
    ReportError where ``output`` is refused (``check_output``); PathError naming the path
    where its folder cannot take it."""
    check_output(output, fmt)
    with writing_to(output, "the report"):
        return _save(report, output, fmt)


def _save(report: Report, output: Path, fmt: ReportFormat) -> list[Path]:
    if fmt is ReportFormat.html:
        atomic_write_text(output, render_html(report))
        return [output]
    prefix = f"{output.stem}-"
    written = [output]
    for figure in report.figures.values():
        path = output.with_name(prefix + figure.name)
        atomic_write(path, lambda handle, png=figure.png: handle.write(png))
        written.append(path)
    atomic_write_text(output, render_markdown(report, prefix))
    return written


def write_report(
    root: str | Path,
    output: str | Path | None = None,
    fmt: ReportFormat = ReportFormat.html,
    *,
    baseline: str | None = None,
    all_pairs: bool = False,
    scope: FamilyScope = FamilyScope.study,
) -> list[Path]:
    """Build the report on every run below ``root`` and write it to ``output`` (default
    ``root/report.html``, or ``root/report.md``); returns the paths written, the report first.
    Nothing is written where the folder holds no run (NoRunsError) or the output is refused
    (ReportError)."""
    target = Path(output) if output is not None else default_output(root, fmt)
    check_output(target, fmt)  # before the figures are drawn, not after
    report = build_report(root, baseline=baseline, all_pairs=all_pairs, scope=scope)
    return save_report(report, target, fmt)
