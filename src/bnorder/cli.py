"""The ``bnorder`` command: thin commands over the library, with rich output kept here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bnorder.compare import NoRunsError, compare, grid_columns
from bnorder.config import ConfigError, ExperimentConfig, load_config, select_schemes
from bnorder.data import Cifar10, DataError, locate_cifar10
from bnorder.executors import LocalWorkers, RayTasks, local_devices
from bnorder.experiment import (
    Executor,
    Plan,
    ResultsConflict,
    RunSpec,
    Shard,
    SweepCallback,
    SweepInterrupted,
    SweepReport,
    check_experiment,
    run_experiment,
)
from bnorder.models import build_model, count_parameters
from bnorder.schemes import CATALOGUE, TOKENS, describe
from bnorder.train import EpochRow, resolve_device

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
    """The sweep's runs, and a bar for each run in progress (several with workers)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.sweep = progress.add_task("sweep", total=None)
        self.bars: dict[RunSpec, tuple[TaskID, int, int]] = {}  # run → (bar, epochs, done)

    def on_sweep_start(self, runs: list[RunSpec], data: Cifar10 | None, where: str) -> None:
        source = (
            f"{data.source} ({len(data.train)} train / {len(data.test)} test images)"
            if data is not None
            else "read by the workers"
        )
        self.progress.console.print(
            f"{len(runs)} runs ({len({r.scheme for r in runs})} schemes × "
            f"{len({r.seed for r in runs})} seeds) on {where}; data: {source}",
            highlight=False,
        )

    def on_run_start(self, run: RunSpec, epochs: int, start_epoch: int = 0) -> None:
        if start_epoch:
            self.progress.console.print(
                f"resuming {run.name} after epoch {start_epoch}", highlight=False
            )
        bar = self.progress.add_task(f"{run.name} epoch {start_epoch + 1}/{epochs}", total=None)
        self.bars[run] = (bar, epochs, start_epoch)

    def on_step(self, run: RunSpec, step: int, steps_per_epoch: int) -> None:
        if run in self.bars:
            bar, epochs, done = self.bars[run]
            self.progress.update(
                bar, total=epochs * steps_per_epoch, completed=done * steps_per_epoch + step
            )

    def on_epoch(self, run: RunSpec, row: EpochRow) -> None:
        if run in self.bars:
            bar, epochs, _ = self.bars[run]
            self.bars[run] = (bar, epochs, row["epoch"])
            self.progress.update(
                bar,
                description=(
                    f"{run.name} epoch {row['epoch']}/{epochs} "
                    f"loss {row['train_loss']:.3f} test acc {row['test_acc']:.2%}"
                ),
            )

    def on_run_end(self, run: RunSpec, status: str, detail: str = "") -> None:
        if run in self.bars:
            self.progress.remove_task(self.bars.pop(run)[0])
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


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


SCALE = "Scale out"  # the help panel of the options that spread a sweep


def _scale(help: str, **extra: Any) -> Any:
    return typer.Option(help=help, rich_help_panel=SCALE, **extra)


ShardOption = Annotated[
    str | None,
    _scale(
        help="Only part K of N (K from 0): disjoint, together the whole sweep. "
        "Default: from SLURM_ARRAY_TASK_ID/COUNT where set.",
    ),
]


def _shard(text: str | None) -> Shard | None:
    if text is not None:
        return Shard.parse(text)
    shard = Shard.from_slurm(os.environ)
    if shard is not None:  # said aloud: a job array that runs whole sweeps needs --shard 0/1
        errors.print(
            f"shard {shard} from SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']} "
            "(--shard 0/1 runs the whole sweep)",
            highlight=False,
        )
    return shard


@contextlib.contextmanager
def _planned(
    resolved: ExperimentConfig,
    *,
    overwrite: bool,
    shard: Shard | None,
    workers: int | None,
    devices: str | None,
    executor: ExecutorName,
    ray_address: str | None,
    ray_cpus: int | None,
    ray_gpus: float | None,
) -> Iterator[tuple[Plan, Executor | None]]:
    """The sweep's plan and where it runs (None: in this process), checked before anything
    trains. Raises the BAD_INPUT errors."""
    if executor is ExecutorName.ray:
        if workers is not None or devices is not None:
            raise ConfigError(
                "--workers/--devices: for --executor local; Ray places each run on the "
                "cluster as --ray-cpus/--ray-gpus ask"
            )
        with RayTasks(
            device=resolved.device,
            address=ray_address,
            cpus=ray_cpus or resolved.train.threads,
            gpus=ray_gpus,
        ) as cluster:
            plan = check_experiment(
                resolved,
                overwrite=overwrite,
                shard=shard,
                device=cluster.device,
                locate=cluster.locate,
            )
            yield plan, cluster
        return
    if ray_address is not None or ray_cpus is not None or ray_gpus is not None:
        raise ConfigError("--ray-address/--ray-cpus/--ray-gpus: only with --executor ray")
    names = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
    workers = workers or (len(names) if names else 1)
    if workers == 1 and not names:
        yield check_experiment(resolved, overwrite=overwrite, shard=shard), None
        return
    found = local_devices(resolved.device, names, workers)
    pool = LocalWorkers(workers, found, threads=resolved.train.threads)
    device = torch.device(found[0].type)  # a run's identity has the type only
    yield check_experiment(resolved, overwrite=overwrite, shard=shard, device=device), pool


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
    fail_fast: Annotated[bool, typer.Option(help="Start no run after one fails.")] = False,
    workers: Annotated[
        int | None,
        _scale(
            help="Train up to N runs at once, in worker processes that share out the CPU "
            "cores and the --devices. Default: 1, or one per --devices entry.",
            min=1,
        ),
    ] = None,
    devices: Annotated[
        str | None,
        _scale(
            help="Deal the workers round robin over these: cuda:0,cuda:1. Default: the "
            "config's device, or every visible GPU where that is cuda or auto.",
        ),
    ] = None,
    shard: ShardOption = None,
    executor: Annotated[
        ExecutorName,
        _scale(
            help="local: this machine; ray: each run a Ray task (pip install 'bnorder\\[ray]').",
        ),
    ] = ExecutorName.local,
    ray_address: Annotated[
        str | None,
        _scale(
            help="The Ray cluster (host:port). Default: $RAY_ADDRESS, else a Ray started here.",
        ),
    ] = None,
    ray_cpus: Annotated[
        int | None,
        _scale(
            help="CPUs per run (its torch threads). Default: train.threads, else 1.",
            min=1,
        ),
    ] = None,
    ray_gpus: Annotated[
        float | None,
        _scale(
            help="GPUs per run; 0.5 packs two runs on a GPU. Default: 1 on cuda, else 0.",
            min=0,
        ),
    ] = None,
) -> None:
    """Train every scheme × seed of CONFIG and write metrics under its output folder.

    Rerunning the same command skips completed runs and resumes interrupted ones from their
    last checkpoint. Workers, shards and Ray tasks may share one output folder: their runs
    merge there."""
    total = 0
    try:
        resolved = _experiment_config(config, set_, schemes, seeds, device, out)
        with _planned(
            resolved,
            overwrite=overwrite,
            shard=_shard(shard),
            workers=workers,
            devices=devices,
            executor=executor,
            ray_address=ray_address,
            ray_cpus=ray_cpus,
            ray_gpus=ray_gpus,
        ) as (plan, where):  # bad input stops here
            total = len(plan.runs)
            if plan.shard is not None:
                console.print(
                    f"shard {plan.shard}: {total} of the sweep's {plan.total} runs",
                    highlight=False,
                )
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
                progress.update(live.sweep, total=total, description="sweep")
                report = run_experiment(
                    resolved,
                    overwrite=overwrite,
                    fail_fast=fail_fast,
                    callback=live,
                    plan=plan,
                    executor=where,
                )
    except BAD_INPUT as err:
        raise fail(err) from None
    except SweepInterrupted as stop:
        done = len(stop.report.completed) + len(stop.report.skipped)
        marked = ", ".join(run.name for run in stop.runs)
        raise fail(
            f"interrupted: {marked or 'no run'} marked interrupted (the last epoch is kept); "
            f"{done} of {total} runs are done. Rerun the same command to resume.",
            code=130,
        ) from None
    except KeyboardInterrupt:
        raise fail("interrupted before any run started", code=130) from None
    _print_report(report, total=total)
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


@app.command("plan")
def plan_command(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
    shard: ShardOption = None,
) -> None:
    """Print the runs CONFIG's sweep (or one shard of it) would train, and which are done
    already; train nothing. Works where the data or the device is not at hand (a login node):
    give --device the type the runs train on where auto would pick another here."""
    try:
        resolved = _experiment_config(config, set_, schemes, seeds, device, out)
        name = resolved.device
        # the device type makes a run's identity; it need not be present here
        where = resolve_device(name) if name == "auto" else torch.device(name)
        plan = check_experiment(
            resolved,
            shard=_shard(shard),
            device=torch.device(where.type),
            locate=lambda root: locate_cifar10(root) or ("not found here", Path(root)),
        )
    except BAD_INPUT as err:
        raise fail(err) from None
    part = f"shard {plan.shard}: " if plan.shard is not None else ""
    done = sum(run in plan.done for run in plan.runs)
    console.print(
        f"{part}{len(plan.runs)} of {plan.total} runs on {where.type}, {done} done, "
        f"{len(plan.runs) - done} to do; output: {resolved.output}; data: {plan.data}",
        highlight=False,
    )
    for run in plan.runs:
        console.print(f"{'done' if run in plan.done else 'to do':6} {run.name}", highlight=False)


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
