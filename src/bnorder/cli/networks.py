"""The commands that look at a network: ``audit`` (where noise feeds BN, and its variance
shift; ``diagnose`` is its alias for a run's folder), ``model`` (what a config builds) and
``schemes`` (the catalogue). What MODEL names is found in the library (``audit_subject``);
here options are parsed and the one ``Audit`` rendered."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bnorder.cli import render, shell
from bnorder.cli.options import (
    AuditDataOption,
    AuditFormatOption,
    ConfigArg,
    FactoryOption,
    ImageSizeOption,
    ModelArg,
    RecalibrateOption,
    RunDirArg,
    SampleOption,
    SaveOption,
    SchemeOption,
    SetOption,
    ShapeOption,
    WeightsOption,
)
from bnorder.cli.render import AuditFormat
from bnorder.cli.shell import errors, say
from bnorder.nets.models import count_parameters
from bnorder.nets.schemes import describe
from bnorder.runs.config import ConfigError, load_config, parse_yaml, select_schemes
from bnorder.runs.network import config_network
from bnorder.runs.rebuild import AuditOptions, audit_run, audit_subject
from bnorder.shift.audit import Audit


def audit(
    model_spec: ModelArg,
    set_: FactoryOption = None,
    weights: WeightsOption = None,
    data: AuditDataOption = None,
    input_shape: ShapeOption = None,
    sample: SampleOption = 512,
    recalibrate: RecalibrateOption = False,
    format_: AuditFormatOption = AuditFormat.table,
    scheme: SchemeOption = None,
    image_size: ImageSizeOption = None,
    save: SaveOption = None,
) -> None:
    """Which BN layers of MODEL dropout (or any training noise) feeds, and, with --data or
    --input-shape, the variance shift of each (Li et al. 2019); a run's folder is rebuilt
    from its newest checkpoint and measured on its own training images. Findings are not
    errors (exit 0)."""
    options = AuditOptions(
        factory=_factory_kwargs(set_ or []),
        scheme=scheme,
        weights=weights,
        data=data,
        input_shape=_shape(input_shape) if input_shape else None,
        image_size=image_size,
        sample=sample,
        recalibrate=recalibrate,
        save=save,
    )
    result = audit_subject(model_spec, options)
    if result.measured_on is None and (data is not None or input_shape):
        say(
            "note: no --weights (nor --set weights=… or pretrained=…): an untrained model's "
            "shifts say little, so only its structure is shown",
            to=errors,
        )
    _show(result, format_)


def diagnose(
    run_dir: RunDirArg,
    sample: Annotated[int, typer.Option(help="Training images to measure on.", min=10)] = 2000,
    recalibrate: Annotated[
        bool, typer.Option(help="Also re-estimate BN with dropout off and re-test.")
    ] = False,
) -> None:
    """An alias of audit RUN_DIR, kept for a while: one run's variance shift per BN layer
    (Li et al. 2019), from its newest checkpoint, measured on 2000 training images unless
    --sample says otherwise."""
    _show(audit_run(run_dir, sample=sample, recalibrate=recalibrate), AuditFormat.table)


def _show(result: Audit, format_: AuditFormat) -> None:
    """The audit as json, markdown or a table with its lines under."""
    if format_ is AuditFormat.json:
        typer.echo(render.audit_json(result))
        return
    if result.layers:  # a model without BN has no table: its one line says so
        if format_ is AuditFormat.markdown:
            typer.echo(render.audit_markdown(result))
        else:
            shell.console.print(render.audit_table(result))
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


def schemes() -> None:
    """List the catalogue: the schemes configs can use by name, and where each comes from."""
    shell.console.print(render.catalogue_table())
    say(render.tokens_line())


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
