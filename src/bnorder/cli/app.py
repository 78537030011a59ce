"""The ``bnorder`` command: each command parses its options, calls one library function and
prints what render.py makes of the result. Bad input ends in one line and exit code 2."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import torch
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from bnorder import __version__
from bnorder.analysis import view
from bnorder.analysis.compare import Comparison, NoRunsError, compare
from bnorder.analysis.report import ReportError, ReportFormat, write_report
from bnorder.analysis.verdicts import FamilyScope, Pairs
from bnorder.cli import live, render
from bnorder.core.errors import BnorderError
from bnorder.data.catalog import DataError, reporting_decodes
from bnorder.data.sources import locate_data
from bnorder.nets.models import count_parameters
from bnorder.nets.schemes import describe
from bnorder.runs.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    parse_yaml,
    select_schemes,
)
from bnorder.runs.estimate import SweepClock, workload
from bnorder.runs.network import config_network, load_network
from bnorder.runs.plan import (
    ExecutorKind,
    ResultsConflict,
    Shard,
    SweepOptions,
    check_writable,
    make_plan,
)
from bnorder.runs.rebuild import diagnose_run
from bnorder.runs.sweep import Sweep, SweepInterrupted, SweepReport, prepare_sweep
from bnorder.runs.train import resolve_device
from bnorder.shift.audit import ModelError
from bnorder.shift.subjects import audit_model, load_model


def prose(text: str | None) -> str | None:
    """A docstring as help text: its paragraphs kept, each on one line. In its rich markup
    mode typer keeps a docstring's single line breaks, which then break sentences mid-line
    wherever the terminal is not as wide as the source."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


class ProseGroup(TyperGroup):
    """The app's command group: every command's help (and its own) as ``prose``. Built when
    the app runs, after every command is registered, so no command can be missed."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.help = prose(self.help)
        for command in self.commands.values():
            command.help = prose(command.help)

    def invoke(self, ctx: click.Context) -> Any:
        """Every command runs through here: the one place bad input becomes its exit."""
        try:
            return super().invoke(ctx)
        except BnorderError as err:
            raise fail(err) from None


app = typer.Typer(
    help="Which order of BatchNorm, activation and Dropout works best? Measured on CIFAR-10, "
    "CIFAR-100, SVHN or your own images, and on your own network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ProseGroup,
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"bnorder {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The options before any command."""


console = Console(soft_wrap=True)  # long paths stay whole: easier to copy, and to grep
errors = Console(stderr=True, soft_wrap=True)

# Bad input of any kind: one line naming the key or path, exit code 2, no traceback.
BAD_INPUT = (ConfigError, DataError, ResultsConflict, NoRunsError, OSError)


def say(text: str, *, to: Console = console) -> None:
    """A line of plain text: user paths, names and values in it print as they are, never as
    rich markup (a folder named ``[/red]`` would otherwise stop the command)."""
    to.print(text, markup=False, highlight=False)


def fail(message: str | BaseException, code: int = 2) -> typer.Exit:
    if isinstance(message, OSError) and message.filename:
        message = f"{message.filename}: {message.strerror}"
    errors.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)
    return typer.Exit(code)


ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set train.epochs=2 (value parsed as YAML)."),
]
SchemesOption = Annotated[str | None, typer.Option(help="Only these schemes: a,b.")]
SeedsOption = Annotated[str | None, typer.Option(help="Seeds to run: 0,1,2.")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (config key: output).")]
# The options every command on an experiment config takes, in the order they are shown.
EXPERIMENT_OPTIONS = {
    "config": (ConfigArg, inspect.Parameter.empty),
    "set_": (SetOption, None),
    "schemes": (SchemesOption, None),
    "seeds": (SeedsOption, None),
    "device": (DeviceOption, None),
    "out": (OutOption, None),
}


def experiment_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options of EXPERIMENT_OPTIONS, declared once here, and call it with
    the config file's path and what the options resolve to (an ExperimentConfig) as its first
    two arguments, ``config`` and ``resolved``; bad options end in ``fail``."""
    own = inspect.signature(command, eval_str=True).parameters.values()
    parameters = [
        *(
            inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a
            )
            for name, (a, d) in EXPERIMENT_OPTIONS.items()
        ),
        *(p for p in own if p.name not in ("config", "resolved")),
    ]

    @functools.wraps(command)
    def wrapper(**given: Any) -> None:
        shared = {name: given.pop(name) for name in EXPERIMENT_OPTIONS}
        path = shared["config"]
        try:
            resolved = load_config(
                shared.pop("config"), shared.pop("set_") or [], output=shared.pop("out"), **shared
            )
        except BAD_INPUT as err:
            raise fail(err) from None
        except KeyboardInterrupt:
            raise fail("interrupted before any run started", code=130) from None
        command(path, resolved, **given)

    wrapper.__signature__ = inspect.Signature(parameters)  # what typer reads
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _stop_on_sigterm() -> None:
    """Slurm, Kubernetes and preemptible machines stop jobs with SIGTERM: treat it as Ctrl-C,
    so that the current run is marked interrupted and can be resumed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread: leave the default
        signal.signal(signal.SIGTERM, interrupt)


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
WorkersOption = Annotated[
    int | None,
    _scale(
        help="Train up to N runs at once, in worker processes that share out the CPU "
        "cores and the --devices. Default: 1, or one per --devices entry.",
        min=1,
    ),
]
DevicesOption = Annotated[
    str | None,
    _scale(
        help="Deal the workers round robin over these: cuda:0,cuda:1. Default: the "
        "config's device, or every visible GPU where that is cuda or auto.",
    ),
]
ExecutorOption = Annotated[
    ExecutorKind,
    _scale(help="local: this machine; ray: each run a Ray task (pip install 'bnorder\\[ray]')."),
]
RayAddressOption = Annotated[
    str | None,
    _scale(help="The Ray cluster (host:port). Default: $RAY_ADDRESS, else a Ray started here."),
]
RayCpusOption = Annotated[
    int | None,
    _scale(help="CPUs per run (its torch threads). Default: train.threads, else 1.", min=1),
]
RayGpusOption = Annotated[
    float | None,
    _scale(help="GPUs per run; 0.5 packs two runs on a GPU. Default: 1 on cuda, else 0.", min=0),
]
OverwriteOption = Annotated[
    bool, typer.Option(help="Replace this sweep's runs made with another config.")
]
FailFastOption = Annotated[bool, typer.Option(help="Start no run after one fails.")]


def _shard(text: str | None) -> Shard | None:
    if text is not None:
        return Shard.parse(text)
    shard = Shard.from_slurm(os.environ)
    if shard is not None:  # said aloud: a job array that runs whole sweeps needs --shard 0/1
        say(
            f"shard {shard} from SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']} "
            "(--shard 0/1 runs the whole sweep)",
            to=errors,
        )
    return shard


def _devices(text: str | None) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.split(",") if d.strip()) if text else ()


@app.command()
@experiment_command
def run(
    config: Path,
    resolved: ExperimentConfig,
    overwrite: OverwriteOption = False,
    fail_fast: FailFastOption = False,
    workers: WorkersOption = None,
    devices: DevicesOption = None,
    shard: ShardOption = None,
    executor: ExecutorOption = ExecutorKind.local,
    ray_address: RayAddressOption = None,
    ray_cpus: RayCpusOption = None,
    ray_gpus: RayGpusOption = None,
) -> None:
    """Train every scheme × seed of CONFIG and write metrics under its output folder.

    Rerunning the same command skips completed runs and resumes interrupted ones from their
    last checkpoint. Workers, shards and Ray tasks may share one output folder: their runs
    merge there."""
    total = 0
    try:
        options = SweepOptions(
            overwrite=overwrite,
            fail_fast=fail_fast,
            shard=_shard(shard),
            workers=workers,
            devices=_devices(devices),
            executor=executor,
            ray_address=ray_address,
            ray_cpus=ray_cpus,
            ray_gpus=ray_gpus,
        )
        with prepare_sweep(resolved, options) as sweep:  # bad input stops here
            total = len(sweep.plan.runs)
            if sweep.plan.shard is not None:
                part = f"shard {sweep.plan.shard}: {total} of the sweep's {sweep.plan.total} runs"
                say(part)
            _stop_on_sigterm()
            report = _run_with_progress(sweep)
    except BAD_INPUT as err:
        raise fail(err) from None
    except SweepInterrupted as stop:
        raise fail(render.interrupted_message(stop, total), code=130) from None
    except KeyboardInterrupt:
        raise fail("interrupted before any run started", code=130) from None
    say(render.report_line(report, total))
    for line in render.failure_lines(report):
        errors.print(line, highlight=False)
    if report.failed:  # refused runs only: bad input, as a conflict found before any run is
        raise typer.Exit(2 if report.refused == len(report.failed) else 1)


def _run_with_progress(sweep: Sweep) -> SweepReport:
    """The sweep, shown live: a bar per run, the sweep's with its time left, and one while a
    data set is decoded into the cache."""
    clock = SweepClock.of(sweep.plan)
    with live.progress_bars(console) as progress:
        display = live.LiveProgress(
            progress, len(sweep.plan.runs), clock, sweep.executor.device.type
        )
        with reporting_decodes(display.decoding):
            return sweep.run([clock, display])  # the clock first: the display shows its estimate


@app.command()
@experiment_command
def validate(config: Path, resolved: ExperimentConfig) -> None:
    """Check CONFIG and its overrides, the device, the data and the output folder; train
    nothing. Exit code 2, with the offending key or path, where something is wrong."""
    try:
        plan = make_plan(resolved, resolve_device(resolved.device), SweepOptions())
        check_writable(resolved.output)
    except BAD_INPUT as err:
        raise fail(err) from None
    say(
        f"{config}: valid. {render.run_counts(plan.runs)} on {plan.device}, "
        f"{len(plan.done)} already done; data: {plan.data_location}; output: {resolved.output}"
    )
    say(f"to train: {workload(plan).line()}")


@app.command("plan")
@experiment_command
def plan_command(config: Path, resolved: ExperimentConfig, shard: ShardOption = None) -> None:
    """Print the runs CONFIG's sweep (or one shard of it) would train, and which are done
    already; train nothing. Works where the data or the device is not at hand (a login node):
    give --device the type the runs train on where auto would pick another here."""
    try:
        name = resolved.device
        # the device type makes a run's identity; it need not be present here
        device = resolve_device(name) if name == "auto" else torch.device(name)
        plan = make_plan(
            resolved,
            torch.device(device.type),
            SweepOptions(shard=_shard(shard)),
            locate=lambda root, dataset: (
                locate_data(root, dataset) or ("not found here", Path(root))
            ),
        )
    except BAD_INPUT as err:
        raise fail(err) from None
    part = f"shard {plan.shard}: " if plan.shard is not None else ""
    done = sum(run in plan.done for run in plan.runs)
    say(
        f"{part}{len(plan.runs)} of {plan.total} runs on {device.type}, {done} done, "
        f"{len(plan.runs) - done} to do; output: {resolved.output}; data: {plan.data_location}"
    )
    say(f"to train: {workload(plan).line()}")
    for run in plan.runs:
        say(f"{'done' if run in plan.done else 'to do':6} {run.name}")


BaselineOption = Annotated[
    str | None,
    typer.Option(
        help="Scheme every other is tested against, in place of the one the config declared "
        "(its baseline key, else its first scheme): another than the declared one makes the "
        "verdicts exploratory. 'best' picks the best mean from the data, so every pair is "
        "tested and the verdicts say exploratory."
    ),
]
PairsOption = Annotated[
    Pairs,
    typer.Option(
        help="baseline: each scheme against the baseline; all: every pair of schemes, Holm "
        "over all of them, and a ranking."
    ),
]
FamilyOption = Annotated[
    FamilyScope,
    typer.Option(
        help="study: one Holm family for the whole study (every grid point, both "
        "accuracies); grid-point: a family per grid point."
    ),
]


@app.command("compare")
def compare_command(
    results: Annotated[Path, typer.Argument(help="Folder holding run folders (searched below).")],
    baseline: BaselineOption = None,
    pairs: PairsOption = Pairs.baseline,
    family: FamilyOption = FamilyScope.study,
    format_: Annotated[
        render.Format, typer.Option("--format", help="Output format.")
    ] = render.Format.table,
    plots: Annotated[
        Path | None, typer.Option(help="Write PNG figures (curves, losses, bars) here.")
    ] = None,
) -> None:
    """Summarise every run below RESULTS, one row per scheme, best first, and test each scheme
    against the baseline its config declared (or every pair). Writes summary.csv and
    comparisons.csv beside the runs."""
    try:
        if baseline is not None and pairs is Pairs.all:
            raise ConfigError("--baseline: not with --pairs all, which tests every pair")
        comparison = compare(results, baseline=baseline, all_pairs=pairs is Pairs.all, scope=family)
    except BAD_INPUT as err:
        raise fail(err) from None
    _show(comparison, results, format_)
    if plots is not None:
        from bnorder.analysis.figures import write_plots  # matplotlib only when asked for

        try:
            written = write_plots(comparison, plots)
        except OSError as err:
            raise fail(err) from None
        say("plots: " + ", ".join(str(p) for p in written), to=errors)
    if comparison.unwritten:  # said after the figures, which stand: exit 2 all the same
        raise fail(f"summary.csv and comparisons.csv not written: {comparison.unwritten}")
    if format_ in (render.Format.table, render.Format.markdown):
        say(f"written: {Path(results) / 'summary.csv'}, {Path(results) / 'comparisons.csv'}")


def _show(comparison: Comparison, results: Path, format_: render.Format) -> None:
    """The comparison in ``format_``: csv and json alone on stdout (for pipes); a table or
    markdown with the verdicts under it, and the runs left out on stderr."""
    if format_ is render.Format.csv:
        typer.echo(view.summary_csv(comparison), nl=False)
        return
    if format_ is render.Format.json:
        typer.echo(view.comparison_json(comparison))
        return
    if format_ is render.Format.markdown:
        typer.echo(view.summary_markdown(comparison))
    else:
        console.print(view.summary_table(comparison, results))
        verdicts = view.verdict_table(comparison)
        if verdicts is not None:
            console.print(verdicts)
    for line in view.comparison_notes(comparison):
        console.print(line, highlight=False)
    for line in view.comparison_problems(comparison):
        errors.print(line, highlight=False)


@app.command("report")
def report_command(
    results: Annotated[Path, typer.Argument(help="Folder holding run folders (searched below).")],
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
    try:
        if baseline is not None and pairs is Pairs.all:
            raise ConfigError("--baseline: not with --pairs all, which tests every pair")
        written = write_report(
            results, output, format_, baseline=baseline, all_pairs=pairs is Pairs.all,
            scope=family,
        )  # fmt: skip
    except (*BAD_INPUT, ReportError) as err:
        raise fail(err) from None
    figures = f", {len(written) - 1} figures beside it" if len(written) > 1 else ""
    say(f"report: {written[0]}{figures}")


@app.command()
def diagnose(
    run_dir: Annotated[Path, typer.Argument(help="One run's folder (OUT/<scheme>/seed<k>).")],
    sample: Annotated[int, typer.Option(help="Training images to measure on.", min=10)] = 2000,
    recalibrate: Annotated[
        bool, typer.Option(help="Also re-estimate BN with dropout off and re-test.")
    ] = False,
) -> None:
    """Variance shift per BN layer of one run (Li et al. 2019), from its last checkpoint."""
    try:
        result = diagnose_run(run_dir, sample=sample, recalibrate=recalibrate)
    except BAD_INPUT as err:
        raise fail(err) from None
    if result.layers:  # a model without BN has no shift to tabulate
        console.print(render.shift_table(result))
    for line in render.shift_notes(result):
        say(line)


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, path/to/file.py:factory, package.module:factory, "
        "or a bnorder config (with --scheme).",
    ),
]
FactoryOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE keyword argument of the factory (repeatable)."),
]
WeightsOption = Annotated[
    Path | None, typer.Option(help="A state_dict, or a checkpoint holding one.")
]
AuditDataOption = Annotated[
    Path | None, typer.Option(help="CIFAR-10 in any layout bnorder reads, to measure on.")
]
ShapeOption = Annotated[
    str | None, typer.Option(help="Measure on random inputs of this shape, e.g. 3,224,224.")
]
SampleOption = Annotated[int, typer.Option(help="Images (or random inputs) to measure on.", min=2)]
RecalibrateOption = Annotated[
    bool, typer.Option(help="Also re-estimate BN with noise off and measure again.")
]
AuditFormatOption = Annotated[
    render.Format, typer.Option("--format", help="table, markdown or json (csv: as json).")
]
SchemeOption = Annotated[
    str | None, typer.Option(help="With a bnorder config: its scheme (default: the first).")
]
ImageSizeOption = Annotated[
    int | None,
    typer.Option(
        help="--data is a class-folder tree of images of any size: resize to this.", min=1
    ),
]


@app.command()
def audit(
    model_spec: ModelArg,
    set_: FactoryOption = None,
    weights: WeightsOption = None,
    data: AuditDataOption = None,
    input_shape: ShapeOption = None,
    sample: SampleOption = 512,
    recalibrate: RecalibrateOption = False,
    format_: AuditFormatOption = render.Format.table,
    scheme: SchemeOption = None,
    image_size: ImageSizeOption = None,
) -> None:
    """Which BN layers of MODEL dropout (or any training noise) feeds, and, with --data or
    --input-shape, the variance shift of each; findings are not errors (exit 0)."""
    try:
        kwargs = _factory_kwargs(set_ or [])
        if model_spec.endswith((".yaml", ".yml")):
            network = config_network(load_config(Path(model_spec)), scheme)[0].build()
        elif model_spec.endswith(".pt"):  # a bnorder checkpoint describes its network
            network = load_network(Path(model_spec))
        else:
            network = load_model(model_spec, kwargs)
        result = audit_model(
            network,
            model_spec,
            pretrained=bool({"weights", "pretrained"} & set(kwargs)),
            weights=weights,
            data=data,
            input_shape=_shape(input_shape) if input_shape else None,
            sample=sample,
            recalibrate=recalibrate,
            image_size=image_size,
        )
    except (*BAD_INPUT, ModelError) as err:
        raise fail(err) from None
    if result.measured_on is None and (data is not None or input_shape):
        say(
            "note: no --weights (nor --set weights=… or pretrained=…): an untrained model's "
            "shifts say little, so only its structure is shown",
            to=errors,
        )
    if format_ in (render.Format.json, render.Format.csv):
        typer.echo(render.audit_json(result))
        return
    if format_ is render.Format.markdown:
        typer.echo(render.audit_markdown(result))
    else:
        console.print(render.audit_table(result))
    for line in render.audit_lines(result):
        say(line)


def _factory_kwargs(assignments: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` for a model factory: values parsed as YAML (numbers, lists)."""
    kwargs = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
        kwargs[key] = parse_yaml(value, source=f"--set {key}")
    return kwargs


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r}: expected sizes like 3,224,224") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: sizes must be positive")
    return shape


@app.command()
def schemes() -> None:
    """List the catalogue: the schemes configs can use by name, and where each comes from."""
    console.print(render.catalogue_table())
    say(render.tokens_line())


@app.command()
def model(
    config: ConfigArg,
    scheme: Annotated[str | None, typer.Option(help="Scheme name (default: the first).")] = None,
    set_: SetOption = None,
) -> None:
    """Print the network CONFIG builds for one scheme, and its parameter count."""
    resolved = load_config(config, set_ or [])
    if scheme is not None:  # the config's, or the catalogue's by name
        resolved = select_schemes(resolved, [scheme])
    name = next(iter(resolved.schemes))
    spec, known = config_network(resolved, name)
    network = spec.build()
    say(f"{name}: {describe(spec.scheme)}")
    say(str(network))
    title = getattr(network, "name", resolved.model.arch)
    shape = spec.shape
    data = f"{shape.classes} classes, {shape.channels}×{shape.height}×{shape.width} images"
    if not known:
        data += " (not known here without decoding the data: CIFAR-10's shape is assumed)"
    say(f"{title}, {data}: {count_parameters(network):,} parameters")


if __name__ == "__main__":
    app()
