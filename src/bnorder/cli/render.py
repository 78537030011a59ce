"""Turns an audit into what the terminal shows (rich tables, markdown, JSON), and a sweep's
runs and outcome into lines; a comparison's views are analysis/view.py's, the live progress
live.py's.

With live.py, the only modules besides the commands' that use rich. It computes nothing: the
figures come from ``audit_subject``; here they are laid out. Lines returned as ``str``
are rich markup (user text in them is escaped), to be printed with ``highlight=False``."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, replace
from enum import Enum
from typing import Any

from rich.markup import escape
from rich.table import Table

from bnorder.analysis.cells import MISSING, json_value, number
from bnorder.core.tables import FittedTable
from bnorder.nets.schemes import CATALOGUE, TOKENS, describe, unread_keys
from bnorder.runs.plan import RunSpec
from bnorder.runs.sweep import SweepInterrupted, SweepReport
from bnorder.shift.audit import GAIN, MARGIN, Audit, BNLayer, Findings


class Format(str, Enum):
    """The forms compare's output takes."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


class AuditFormat(str, Enum):
    """The forms an audit's findings take (a list of layers: no CSV of its own)."""

    table = "table"
    markdown = "markdown"
    json = "json"


def catalogue_table() -> Table:
    """The schemes a config can use by name, their order and where each comes from."""
    table = Table(title=escape("catalogue (in a config: schemes: [bn_relu_drop, drop_head])"))
    for name in ("name", "order", "from"):
        table.add_column(name, overflow="fold")
    for name, scheme in CATALOGUE.items():
        order = describe(scheme)
        table.add_row(name, order, scheme.source)
    return table


def tokens_line() -> str:
    """What each token of a scheme's order means."""
    return "tokens: " + "; ".join(f"{token}: {text}" for token, text in TOKENS.items())


# ---------------------------------------------------------------- tables


# ---------------------------------------------------------------- a sweep in words


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def run_counts(runs: list[RunSpec]) -> str:
    """``15 runs (3 schemes × 3 seeds × 2 grid points; bn_only once for every
    model.dropout)``: a sweep's runs in words, naming the schemes that grid points share."""
    counts = [
        _count(len({r.scheme for r in runs}), "scheme"),
        _count(len({r.seed for r in runs}), "seed"),
    ]
    if any(r.label for r in runs):
        counts.append(_count(len({r.label for r in runs}), "grid point"))
    keys = {key for run in runs for key, _ in run.grid}
    shared: dict[str, list[str]] = {}
    for run in runs:
        over = sorted(unread_keys(run.order) & keys)
        if over:
            shared.setdefault(run.scheme, over)
    notes = [f"{scheme} once for every {', '.join(over)}" for scheme, over in shared.items()]
    return f"{_count(len(runs), 'run')} ({' × '.join(counts)}{''.join('; ' + n for n in notes)})"


def report_line(report: SweepReport, total: int) -> str:
    """How a finished sweep's ``total`` runs ended, in one line (plain text)."""
    resumed = f" ({len(report.resumed)} resumed from a checkpoint)" if report.resumed else ""
    parts = [f"{len(report.completed)} completed{resumed}", f"{len(report.skipped)} already done"]
    if report.busy:
        parts.append(f"{len(report.busy)} being trained by another process")
    parts.append(f"{len(report.failed)} failed")
    not_started = total - len(report.completed) - len(report.skipped) - len(report.busy)
    not_started -= len(report.failed)
    if not_started:
        parts.append(f"{not_started} not started (--fail-fast)")
    line = f"{', '.join(parts)} in {report.wall_seconds:.1f} s; results in {report.output}"
    # a command to paste: the path quoted as a shell reads it (a space, a ';', a '$')
    return (
        line
        if report.failed
        else f"{line}\nnext: {shlex.join(['bnorder', 'compare', str(report.output)])}"
    )


def failure_lines(report: SweepReport) -> list[str]:
    """One line (rich markup) per run that failed or diverged, with why."""
    return [f"[red]{escape(run.name)}[/]: {escape(reason)}" for run, reason in report.failed]


def _interrupted_run(name: str, epochs: int | None) -> str:
    """What Ctrl-C left of one run, which had ``epochs`` epochs done (None: it had not yet
    chosen the checkpoint to resume from, and had trained nothing)."""
    if epochs is None:
        return f"{name} interrupted while starting: any checkpoint it had is kept"
    if epochs:
        return f"{name} marked interrupted after epoch {epochs}, which is kept"
    return f"{name} interrupted before its first epoch: nothing kept, it starts over"


def interrupted_message(stop: SweepInterrupted) -> str:
    """What Ctrl-C left: each run marked interrupted and what of it is kept, and how many of
    the sweep's runs are done."""
    done = len(stop.report.completed) + len(stop.report.skipped)
    marked = [_interrupted_run(run.name, stop.epochs[run]) for run in stop.runs]
    return (
        f"interrupted: {'; '.join(marked) or 'no run was in progress'}; "
        f"{done} of {stop.total} runs are done. Rerun the same command to resume."
    )


# ---------------------------------------------------------------- audit


# the measured columns: header, the BNLayer field, its format; each shown where any layer has it
MEASURED = [
    ("running var", "running_var", ".4g"),
    ("real var", "real_var", ".4g"),
    ("shift", "shift", ".3f"),
    ("recalibrated", "shift_recalibrated", ".3f"),
]


# past this a shift is printed as 2.2e+21, not as 22 digits and three decimals
COMPACT_FROM = 1e6


def figure(value: float | None, spec: str) -> str:
    """A measured figure in ``spec``; one this large or larger in two significant digits."""
    if value is not None and math.isfinite(value) and abs(value) >= COMPACT_FROM:
        return f"{value:.2g}"
    return number(math.nan if value is None else value, spec)


def audit_cells(result: Audit, between: str = ", ") -> tuple[list[str], list[list[str]]]:
    """Every BN layer as printed: the noise that feeds it (kind, rate, operations away) and,
    where measured, its two variances and its shift, before and after re-calibration. The
    feeds of a layer are joined by ``between`` (a table's new line keeps each in line)."""
    shown = [
        (header, key, spec)
        for header, key, spec in MEASURED
        if any(getattr(layer, key) is not None for layer in result.layers)
    ]
    headers = ["BN layer", "fed by", "rate", "hops", *(header for header, _, _ in shown)]
    rows = []
    for layer in result.layers:
        feeds = layer.fed_by
        cells = [
            layer.name,
            between.join(f"{f.name} ({f.kind})" for f in feeds) or "—",
            between.join(MISSING if f.rate is None else f"{f.rate:g}" for f in feeds) or "—",
            between.join(str(f.hops) for f in feeds) or "—",
        ]
        cells += [figure(getattr(layer, key), spec) for _, key, spec in shown]
        rows.append(cells)
    return headers, rows


def audit_table(result: Audit) -> FittedTable:
    """The layers as a terminal table, the subject and how the data flow was found above."""
    headers, rows = audit_cells(result, between="\n")  # a line per feed, in every column
    subject = f"{result.subject}: " if result.subject else ""
    return FittedTable(
        headers,
        rows,
        title=escape(f"{subject}BN layers and the noise that feeds them ({result.method})"),
        left=frozenset(["BN layer", "fed by"]),
    )


def audit_markdown(result: Audit) -> str:
    headers, rows = audit_cells(result)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def audit_lines(result: Audit) -> list[str]:
    """The summary, what was measured on, and advice drawn from the findings (plain text)."""
    lines = [result.summary()]
    if not result.layers:
        return lines
    if result.measured_on:
        lines.append(f"measured on {result.measured_on}")
    lines += result.notes
    if result.accuracy is not None:
        after = result.accuracy_recalibrated
        lines.append(
            f"test accuracy {result.accuracy:.2%}"
            + (
                f" → {after:.2%} after re-calibrating BN with noise off ({result.recalibration})"
                if after is not None
                else ""
            )
        )
    return [*lines, *_advice(result)]


def _advice(result: Audit) -> list[str]:
    """What the findings advise: about noise (blamed only for shift past the clean layers'),
    about the shift of layers no noise feeds, and about re-calibration, where measured."""
    findings = result.findings
    if findings is None:
        return [_structure_advice(result)]
    lines = _noise_advice(result, findings)
    if findings.clean_shifted:
        layer = _largest(result, findings.clean_shifted)
        lines.append(
            f"advice: {_count(len(findings.clean_shifted), 'BN layer')} that no noise feeds "
            f"{_shifts(findings.clean_shifted)} anyway (largest {figure(layer.shift, '.3f')} at "
            f"{layer.name}): augmentation, padding or short training do that, not noise"
        )
    return lines + _recalibration_advice(result, findings)


def _shifts(names: list[str]) -> str:
    return "shifts" if len(names) == 1 else "shift"


def _largest(result: Audit, names: list[str]) -> BNLayer:
    return max((x for x in result.layers if x.name in names), key=lambda x: x.shift or 0.0)


def _structure_advice(result: Audit) -> str:
    """Where nothing was measured: which layers noise feeds, not how much it shifts them."""
    exposed = result.exposed
    if not exposed:
        return _no_noise(result, "no variance shift")
    return (
        f"advice: {_count(len(exposed), 'BN layer')} {'is' if len(exposed) == 1 else 'are'} "
        "fed by noise, which may shift the variance BN learns in training from what it sees "
        "in eval mode; measure it (--weights and --data; audit(model, batches)) to tell it "
        "from the shift clean layers have too, or move the noise after the last BN layer"
    )


def _no_noise(result: Audit, causes: str) -> str:
    safe = "; the noise after the last BN is safe for BN" if result.noise_after_last_bn else ""
    return f"advice: no BN layer receives noise, so dropout causes {causes} here{safe}"


def _noise_advice(result: Audit, findings: Findings) -> list[str]:
    """Noise blamed for the layers it shifts past the reference, and cleared of the rest."""
    if not result.exposed:
        return [_no_noise(result, "none of the shift")]
    ref = findings.clean_reference
    against = (
        f"the clean layers' largest ({figure(ref, '.3f')} at {findings.clean_reference_layer})"
        if ref is not None
        else "no shift (no clean BN layer was measured to compare with)"
    )
    lines = []
    if findings.noise_shifted:
        worst = _largest(result, findings.noise_shifted)
        fixed = worst.shift_recalibrated
        lines.append(
            f"advice: noise shifts {_count(len(findings.noise_shifted), 'BN layer')} past "
            f"{MARGIN:g} × {against}: largest {figure(worst.shift, '.3f')} at {worst.name}. "
            "Either re-estimate BN with noise off after training (bnorder.recalibrate_bn)"
            + (
                f", which brings that layer to {figure(fixed, '.3f')} here"
                if fixed is not None
                else ""
            )
            + ", or move the noise after the last BN layer (or drop it)"
        )
    if findings.like_clean:
        most = _largest(result, findings.like_clean)
        layers, largest = (
            _count(len(findings.like_clean), "noise-fed BN layer"),
            (f"largest {figure(most.shift, '.3f')} at {most.name}"),
        )
        lines.append(
            f"advice: {layers} {_shifts(findings.like_clean)} no more than the clean ones "
            f"({largest}, within {MARGIN:g} × {against}): that shift is not noise's "
            "(augmentation, padding and short training shift clean layers too)"
            if ref is not None
            else f"advice: {layers} {_shifts(findings.like_clean)} within a factor {MARGIN:g} of "
            f"none ({largest}): noise "
            "does not shift them here"
        )
    return lines


def _recalibration_advice(result: Audit, findings: Findings) -> list[str]:
    """Whether re-estimating BN helps, whatever shifted it."""
    gain, helps = findings.recalibration_gain, findings.recalibration_helps
    if helps is None:
        shifted = findings.noise_shifted or findings.clean_shifted
        return ["advice: --recalibrate measures whether re-estimating BN helps"] if shifted else []
    if helps:
        if gain is not None:
            by = f"test accuracy {gain * 100:+.1f} points"
        else:
            worst = max(result.layers, key=lambda x: x.shift or 0.0)
            by = f"{worst.name} {figure(worst.shift, '.3f')} → "
            by += f"{figure(worst.shift_recalibrated, '.3f')}"
        return [f"advice: re-calibrating BN helps here, whatever shifted it: {by}"]
    if gain is not None and gain <= -GAIN:
        return [
            f"advice: re-calibrating BN costs {-gain * 100:.1f} points of test accuracy here: "
            "keep the trained statistics"
        ]
    change = f" (test accuracy {gain * 100:+.1f} points)" if gain is not None else ""
    return [f"advice: re-calibrating BN changes little here{change}"]


def audit_json(result: Audit) -> str:
    """The findings as JSON; an infinite shift (a dead channel) as null, which JSON has."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return json_value(value)

    found = asdict(replace(result, recalibrated_model=None))  # weights are no finding
    del found["recalibrated_model"]
    findings = result.findings  # a property: computed from the figures, as printed
    extra = {
        "summary": result.summary(),
        "findings": None if findings is None else asdict(findings),
    }
    return json.dumps(plain(found | extra), indent=2)
