"""The commands on a folder of results: ``compare`` tabulates and tests its runs, ``report``
writes them up in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bnorder.analysis import view
from bnorder.analysis.compare import Comparison, compare
from bnorder.analysis.report import ReportFormat, write_report
from bnorder.analysis.verdicts import FamilyScope, Pairs
from bnorder.cli import shell
from bnorder.cli.options import BaselineOption, FamilyOption, PairsOption, ResultsArg
from bnorder.cli.render import Format
from bnorder.cli.shell import errors, fail, say
from bnorder.runs.config import ConfigError


def _one_baseline(baseline: str | None, pairs: Pairs) -> None:
    if baseline is not None and pairs is Pairs.all:
        raise ConfigError("--baseline: not with --pairs all, which tests every pair")


def compare_command(
    results: ResultsArg,
    baseline: BaselineOption = None,
    pairs: PairsOption = Pairs.baseline,
    family: FamilyOption = FamilyScope.study,
    format_: Annotated[
        Format, typer.Option("--format", help="table, markdown, csv or json.")
    ] = Format.table,
    plots: Annotated[
        Path | None, typer.Option(help="Write PNG figures (curves, losses, bars) here.")
    ] = None,
) -> None:
    """Summarise every run below RESULTS, one row per scheme, best first, and test each scheme
    against the baseline its config declared (or every pair). Writes summary.csv and
    comparisons.csv beside the runs."""
    _one_baseline(baseline, pairs)
    comparison = compare(results, baseline=baseline, all_pairs=pairs is Pairs.all, scope=family)
    _show(comparison, results, format_)
    if plots is not None:
        from bnorder.analysis.figures import write_plots  # matplotlib only when asked for

        written = write_plots(comparison, plots)
        say("plots: " + ", ".join(str(p) for p in written), to=errors)
    if comparison.unwritten:  # said after the figures, which stand: exit 2 all the same
        raise fail(f"summary.csv and comparisons.csv not written: {comparison.unwritten}")
    if format_ in (Format.table, Format.markdown):
        say(f"written: {Path(results) / 'summary.csv'}, {Path(results) / 'comparisons.csv'}")


def _show(comparison: Comparison, results: Path, format_: Format) -> None:
    """The comparison in ``format_``: csv and json alone on stdout (for pipes); a table or
    markdown with the verdicts under it, and the runs left out on stderr."""
    if format_ is Format.csv:
        typer.echo(view.summary_csv(comparison), nl=False)
        return
    if format_ is Format.json:
        typer.echo(view.comparison_json(comparison))
        return
    if format_ is Format.markdown:
        typer.echo(view.summary_markdown(comparison))
    else:
        shell.console.print(view.summary_table(comparison, results))
        verdicts = view.verdict_table(comparison)
        if verdicts is not None:
            shell.console.print(verdicts)
    for line in view.comparison_notes(comparison):
        shell.console.print(line, highlight=False)
    for line in view.comparison_problems(comparison):
        errors.print(line, highlight=False)


def report_command(
    results: ResultsArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The report's file. Default: RESULTS/report.html, or RESULTS/report.md.",
        ),
    ] = None,
    format_: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            help="html: one self-contained file, figures inside; markdown: report.md with its "
            "PNG figures beside it.",
        ),
    ] = ReportFormat.html,
    baseline: BaselineOption = None,
    pairs: PairsOption = Pairs.baseline,
    family: FamilyOption = FamilyScope.study,
) -> None:
    """Write one report on every run below RESULTS: the answer first (both accuracies, the
    regime, the forest plot and the verdicts), then the question, the summary with CIs, the
    figures, the runs left out, provenance and the command that reproduces it. Writes nothing
    else: summary.csv and the runs stay as they are."""
    _one_baseline(baseline, pairs)
    written = write_report(
        results, output, format_, baseline=baseline, all_pairs=pairs is Pairs.all, scope=family
    )
    figures = f", {len(written) - 1} figures beside it" if len(written) > 1 else ""
    say(f"report: {written[0]}{figures}")
