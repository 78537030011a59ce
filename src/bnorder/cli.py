"""The ``bnorder`` command: thin commands over the library, with rich output kept here."""

from __future__ import annotations

import contextlib
import json
import math
import signal
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bnorder.compare import NoRunsError, compare, grid_columns
from bnorder.config import ConfigError, ExperimentConfig, load_config, select_schemes
from bnorder.data import Cifar10, DataError
from bnorder.experiment import (
    ResultsConflict,
    RunSpec,
    SweepCallback,
    SweepInterrupted,
    SweepReport,
    check_experiment,
    run_experiment,
)
from bnorder.models import build_model, count_parameters
from bnorder.schemes import CATALOGUE, TOKENS, describe
from bnorder.train import EpochRow

app = typer.Typer(
    help="Which order of BatchNorm, activation and Dropout works best? Measured on CIFAR-10.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)  # long paths stay whole: easier to copy, and to grep
errors = Console(stderr=True, soft_wrap=True)

# Bad input of any kind: one line naming the key or path, exit code 2, no traceback.
BAD_INPUT = (ConfigError, DataError, ResultsConflict, NoRunsError, OSError)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set train.epochs=2 (value parsed as YAML)."),
]


def fail(message: str | BaseException, code: int = 2) -> typer.Exit:
    if isinstance(message, OSError) and message.filename:
        message = f"{message.filename}: {message.strerror}"
    errors.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)
    return typer.Exit(code)


def _load(config: Path, overrides: list[str], schemes: list[str] | None = None) -> ExperimentConfig:
    resolved = load_config(config, overrides)
    return resolved if schemes is None else select_schemes(resolved, schemes)


SchemesOption = Annotated[str | None, typer.Option(help="Only these schemes: a,b.")]
SeedsOption = Annotated[str | None, typer.Option(help="Seeds to run: 0,1,2.")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (config key: output).")]


def _experiment_config(
    config: Path,
    set_: list[str] | None,
    schemes: str | None,
    seeds: str | None,
    device: str | None,
    out: Path | None,
) -> ExperimentConfig:
    """The config of ``run`` and ``validate``: the file, then --set, then the short options."""
    overrides = list(set_ or [])
    if seeds is not None:
        overrides.append(f"seeds=[{seeds}]")
    if device is not None:
        overrides.append(f"device={json.dumps(device)}")
    if out is not None:
        overrides.append(f"output={json.dumps(str(out))}")
    names = None if schemes is None else [s.strip() for s in schemes.split(",") if s.strip()]
    return _load(config, overrides, names)


class LiveProgress(SweepCallback):
    """The sweep's runs and the current run's epochs, drawn with rich."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.sweep = progress.add_task("sweep", total=None)
        self.current = progress.add_task("run", total=None, visible=False)
        self.epochs = 0
        self.epoch = 0

    def on_sweep_start(self, runs: list[RunSpec], data: Cifar10, device: torch.device) -> None:
        self.progress.console.print(
            f"{len(runs)} runs ({len({r.scheme for r in runs})} schemes × "
            f"{len({r.seed for r in runs})} seeds) on {device}; data: {data.source} "
            f"({len(data.train)} train / {len(data.test)} test images)",
            highlight=False,
        )

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        self.epochs, self.epoch = epochs, start_epoch
        if start_epoch:
            self.progress.console.print(
                f"resuming {run.name} after epoch {start_epoch}", highlight=False
            )
        self.progress.reset(
            self.current,
            total=None,
            visible=True,
            description=f"{run.name} epoch {start_epoch + 1}/{epochs}",
        )

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        total = self.epochs * steps_per_epoch
        self.progress.update(
            self.current, total=total, completed=self.epoch * steps_per_epoch + step
        )

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        self.epoch = row["epoch"]
        self.progress.update(
            self.current,
            description=(
                f"{run.name} epoch {row['epoch']}/{self.epochs} "
                f"loss {row['train_loss']:.3f} test acc {row['test_acc']:.2%}"
            ),
        )

    def on_run_end(self, run: RunSpec, status: str, detail: str = "") -> None:
        self.progress.advance(self.sweep)
        colour = {"completed": "green", "skipped": "dim", "busy": "yellow"}.get(status, "red")
        self.progress.console.print(
            f"[{colour}]{status}[/] {escape(f'{run.name} {detail}'.rstrip())}", highlight=False
        )


def _stop_on_sigterm() -> None:
    """Slurm, Kubernetes and preemptible machines stop jobs with SIGTERM: treat it as Ctrl-C,
    so that the current run is marked interrupted and can be resumed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread: leave the default
        signal.signal(signal.SIGTERM, interrupt)


@app.command()
def run(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace this sweep's runs made with another config.")
    ] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed run.")] = False,
) -> None:
    """Train every scheme × seed of CONFIG and write metrics under its output folder.

    Rerunning the same command skips completed runs and resumes interrupted ones from their
    last checkpoint."""
    try:
        resolved = _experiment_config(config, set_, schemes, seeds, device, out)
        plan = check_experiment(resolved, overwrite=overwrite)  # bad input stops here
        runs = plan.runs
        _stop_on_sigterm()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            live = LiveProgress(progress)
            progress.update(live.sweep, total=len(runs), description="sweep")
            report = run_experiment(
                resolved, overwrite=overwrite, fail_fast=fail_fast, callback=live, plan=plan
            )
    except BAD_INPUT as err:
        raise fail(err) from None
    except SweepInterrupted as stop:
        done = len(stop.report.completed) + len(stop.report.skipped)
        raise fail(
            f"interrupted: {stop.run.name} is marked interrupted (its last epoch is kept); "
            f"{done} of {len(runs)} runs are done. Rerun the same command to resume.",
            code=130,
        ) from None
    except KeyboardInterrupt:
        raise fail("interrupted before any run started", code=130) from None
    _print_report(report, total=len(runs))
    if report.failed:
        raise typer.Exit(1)


def _print_report(report: SweepReport, total: int) -> None:
    parts = [f"{len(report.completed)} completed", f"{len(report.skipped)} already done"]
    if report.busy:
        parts.append(f"{len(report.busy)} being trained by another process")
    parts.append(f"{len(report.failed)} failed")
    not_started = total - len(report.completed) - len(report.skipped) - len(report.busy)
    not_started -= len(report.failed)
    if not_started:
        parts.append(f"{not_started} not started (--fail-fast)")
    console.print(
        f"{', '.join(parts)} in {report.wall_seconds:.1f} s; results in {report.output}",
        highlight=False,
    )
    for failed, reason in report.failed:
        errors.print(f"[red]{escape(failed.name)}[/]: {escape(reason)}", highlight=False)
    if not report.failed:
        console.print(f"next: bnorder compare {report.output}", highlight=False)


@app.command()
def validate(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
) -> None:
    """Check CONFIG and its overrides, the device, the data and the output folder; train
    nothing. Exit code 2, with the offending key or path, where something is wrong."""
    try:
        resolved = _experiment_config(config, set_, schemes, seeds, device, out)
        plan = check_experiment(resolved)
    except BAD_INPUT as err:
        raise fail(err) from None
    console.print(
        f"{config}: valid. {len(plan.runs)} runs ({len(resolved.schemes)} schemes × "
        f"{len(resolved.seeds)} seeds"
        + (f" × {len(plan.configs)} grid points" if resolved.grid else "")
        + f") on {plan.device}, {len(plan.done)} already done; "
        f"data: {plan.data}; output: {resolved.output}",
        highlight=False,
    )


def _cell(value: object) -> str:
    return "—" if isinstance(value, float) and math.isnan(value) else str(value)


def _pct(fraction: float) -> str:
    return "—" if math.isnan(fraction) else f"{fraction * 100:.2f}"


def _signed(fraction: float) -> str:
    """A difference of fractions, in points."""
    return "—" if math.isnan(fraction) else f"{fraction * 100:+.2f}"


def _number(value: float, spec: str) -> str:
    return "—" if math.isnan(value) else format(value, spec)


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


def _summary_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The summary as printed: headers and cells, accuracies in percent."""
    grid = grid_columns(summary)
    # the experiment folder goes unsaid only where every row's grid values already say it
    said_by_grid = bool(grid) and bool(summary[grid].notna().all(axis=None))
    several = summary["experiment"].nunique() > 1 and not said_by_grid
    mixed = summary.groupby("experiment")["config"].nunique().max() > 1
    left_out = summary["incomplete"].sum() > 0
    headers = [
        *(["experiment"] if several else []),
        *grid,
        *(["config"] if mixed else []),
        "scheme",
        "runs",
        *(["not done"] if left_out else []),
        "test",
        "± std",
        "95% CI",
        "best test",
        "train",
        "gap",
        *(["max shift"] if "vshift_max_gmean" in summary else []),
        *(["recal. test", "gain"] if "test_acc_recalibrated_mean" in summary else []),
        "s/ep",
    ]
    rows = []

    def row_grid(row: tuple) -> list:
        return [getattr(row, f"_{summary.columns.get_loc(c) + 1}") for c in grid]

    for row in summary.itertuples():
        ci = (
            "n<2"
            if math.isnan(row.final_test_acc_ci_low)
            else f"{_pct(row.final_test_acc_ci_low)}–{_pct(row.final_test_acc_ci_high)}"
        )
        rows.append(
            [
                *([row.experiment] if several else []),
                *(_cell(value) for value in row_grid(row)),
                *([row.config] if mixed else []),
                row.scheme,
                str(row.runs),
                *([str(row.incomplete)] if left_out else []),
                _pct(row.final_test_acc_mean),
                _pct(row.final_test_acc_std),
                ci,
                _pct(row.best_test_acc_mean),
                _pct(row.final_train_acc_mean),
                _pct(row.gap_mean),
                *([_number(row.vshift_max_gmean, ".2f")] if "max shift" in headers else []),
                *(
                    [_pct(row.test_acc_recalibrated_mean), _signed(row.recalibration_gain_mean)]
                    if "gain" in headers
                    else []
                ),
                _number(row.epoch_seconds_mean, ".1f"),
            ]
        )
    return headers, rows


@app.command("compare")
def compare_command(
    results: Annotated[Path, typer.Argument(help="Folder holding run folders (searched below).")],
    baseline: Annotated[
        str | None, typer.Option(help="Scheme every other is tested against (default: the best).")
    ] = None,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    plots: Annotated[
        Path | None, typer.Option(help="Write PNG figures (curves, losses, bars) here.")
    ] = None,
) -> None:
    """Summarise every run below RESULTS, one row per scheme, best first, and test each scheme
    against the baseline. Writes summary.csv and comparisons.csv beside the runs."""
    try:
        comparison = compare(results, baseline=baseline)
    except BAD_INPUT as err:
        raise fail(err) from None
    summary, pairs = comparison.summary, comparison.pairs
    if plots is not None:
        from bnorder.plots import write_plots  # matplotlib only when asked for

        try:
            written = write_plots(comparison, plots)
        except OSError as err:
            raise fail(err) from None
        errors.print("plots: " + ", ".join(str(p) for p in written), highlight=False)
    if format_ is Format.csv:
        typer.echo(summary.to_csv(index=False), nl=False)
        return
    if format_ is Format.json:
        payload = {
            "summary": json.loads(summary.to_json(orient="records")),
            "comparisons": json.loads(pairs.to_json(orient="records")) if len(pairs) else [],
            "incomplete": json.loads(comparison.incomplete.to_json(orient="records")),
            "problems": comparison.problems,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    headers, rows = _summary_rows(summary)
    if format_ is Format.markdown:
        typer.echo("| " + " | ".join(headers) + " |")
        typer.echo("|" + "|".join("---" for _ in headers) + "|")
        for cells in rows:
            typer.echo("| " + " | ".join(cells) + " |")
    else:
        table = Table(
            title=f"{results}: accuracy (%) after the last epoch, mean over seeds, best first",
            caption="test: final test accuracy, its std and 95% CI (Student t) over seeds, "
            "none where n < 2; best test: the best epoch's; train: the last epoch's running "
            "accuracy in train mode (dropout, augmentation on); gap: train − test; "
            + (
                "max shift: the largest BN variance shift after the last epoch, geometric "
                "mean over seeds (1 = none); "
                if "max shift" in headers
                else ""
            )
            + (
                "recal. test: test accuracy after BN re-calibration, gain: its change; "
                if "gain" in headers
                else ""
            )
            + "s/ep: seconds per epoch",
        )
        for name in headers:
            left = name in ("experiment", "config", "scheme")
            table.add_column(name, no_wrap=left, justify="left" if left else "right")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)
    for verdict in pairs.get("verdict", []):
        console.print(f"- {escape(verdict)}", highlight=False)
    for run in comparison.incomplete.itertuples():
        where = Path(run.experiment) / run.scheme / f"seed{run.seed}"
        error = f" ({run.error})" if run.error else ""
        console.print(
            f"[yellow]not averaged[/] {escape(f'{where}: {run.status}{error}')}", highlight=False
        )
    for line in comparison.problems:
        errors.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    console.print(
        f"written: {Path(results) / 'summary.csv'}, {Path(results) / 'comparisons.csv'}",
        highlight=False,
    )


@app.command()
def diagnose(
    run_dir: Annotated[Path, typer.Argument(help="One run's folder (OUT/<scheme>/seed<k>).")],
    sample: Annotated[int, typer.Option(help="Training images to measure on.", min=10)] = 2000,
    recalibrate: Annotated[
        bool, typer.Option(help="Also re-estimate BN with dropout off and re-test.")
    ] = False,
) -> None:
    """Variance shift per BN layer of one run (Li et al. 2019), from its last checkpoint."""
    from bnorder.experiment import diagnose_run

    try:
        result = diagnose_run(run_dir, sample=sample, recalibrate=recalibrate)
    except BAD_INPUT as err:
        raise fail(err) from None
    layers = result["layers"]
    if not layers:
        console.print(f"{result['scheme']}: no BN layer, so no variance shift", highlight=False)
        return
    after = {r["layer"]: r["shift"] for r in result.get("layers_recalibrated", [])}
    table = Table(
        title=f"{result['scheme']} seed {result['seed']}, epoch {result['epoch']}: variance "
        f"shift per BN layer on {sample} training images (1 = none)"
    )
    for name in (
        "layer",
        "name",
        "running var",
        "real var",
        "shift",
        *(["after"] if after else []),
    ):
        table.add_column(name, justify="left" if name == "name" else "right")
    for row in layers:
        table.add_row(
            str(row["layer"]),
            row["name"],
            f"{row['running_var']:.4g}",
            f"{row['real_var']:.4g}",
            f"{row['shift']:.3f}",
            *([f"{after[row['layer']]:.3f}"] if after else []),
        )
    console.print(table)
    worst = max(layers, key=lambda r: r["shift"])
    console.print(
        f"largest shift {worst['shift']:.3f} at layer {worst['layer']} ({worst['name']})",
        highlight=False,
    )
    if recalibrate:
        console.print(
            f"test accuracy {result['test_acc']:.2%} → {result['test_acc_recalibrated']:.2%} "
            f"after re-calibrating BN with dropout off ({result['recalibration']})",
            highlight=False,
        )


@app.command()
def schemes() -> None:
    """List the catalogue: the schemes configs can use by name, and where each comes from."""
    table = Table(title=escape("catalogue (in a config: schemes: [bn_relu_drop, drop_head])"))
    for name in ("name", "order", "from"):
        table.add_column(name, overflow="fold")
    for name, scheme in CATALOGUE.items():
        table.add_row(name, describe(scheme.ops, head=scheme.head), scheme.source)
    console.print(table)
    console.print(
        "tokens: " + "; ".join(f"{token}: {text}" for token, text in TOKENS.items()),
        highlight=False,
    )


@app.command()
def model(
    config: ConfigArg,
    scheme: Annotated[str | None, typer.Option(help="Scheme name (default: the first).")] = None,
    set_: SetOption = None,
) -> None:
    """Print the network CONFIG builds for one scheme, and its parameter count."""
    try:
        resolved = _load(config, list(set_ or []), None if scheme is None else [scheme])
        name, spec = next(iter(resolved.schemes.items()))
        network = build_model(resolved.model, spec.ops, head=spec.head)
    except BAD_INPUT as err:
        raise fail(err) from None
    console.print(f"{name}: {describe(spec.ops, head=spec.head)}", highlight=False)
    console.print(str(network), markup=False, highlight=False)
    console.print(f"parameters: {count_parameters(network):,}", highlight=False)


if __name__ == "__main__":
    app()
