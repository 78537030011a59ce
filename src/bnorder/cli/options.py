"""The command line's arguments and options, each declared once as an ``Annotated`` type that
every command taking it uses; and the one helper that loads an experiment config from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bnorder.analysis.verdicts import FamilyScope, Pairs
from bnorder.cli.render import AuditFormat
from bnorder.runs.claim import check_config_source
from bnorder.runs.config import ExperimentConfig, load_config
from bnorder.runs.plan import ExecutorKind
from bnorder.shift.subjects import INPUT_LIMIT, RANDOM_LIMIT, SAMPLE_LIMIT

# ---------------------------------------------------------------- an experiment config

ConfigArg = Annotated[Path, typer.Argument(help="Experiment config (YAML).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key: --set train.epochs=2 (value parsed as YAML)."),
]
SchemesOption = Annotated[str | None, typer.Option(help="Only these schemes: a,b.")]
SeedsOption = Annotated[str | None, typer.Option(help="Seeds to run: 0,1,2.")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
OutOption = Annotated[Path | None, typer.Option(help="Output folder (config key: output).")]


def experiment_config(
    config: Path,
    overrides: list[str] | None,
    schemes: str | None,
    seeds: str | None,
    device: str | None,
    out: Path | None,
) -> ExperimentConfig:
    """What an experiment command's config argument and shared options resolve to: the file,
    then ``--set``, then the short options; never the file a sweep writes its resolved config
    over. Raises ConfigError."""
    resolved = load_config(
        config, overrides or [], schemes=schemes, seeds=seeds, device=device, output=out
    )
    check_config_source(config, resolved)
    return resolved


# ---------------------------------------------------------------- spreading a sweep

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

# ---------------------------------------------------------------- reading results

ResultsArg = Annotated[Path, typer.Argument(help="Folder holding run folders (searched below).")]
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

# ---------------------------------------------------------------- a network

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="A run's folder (OUT/<scheme>/seed<k>), a bnorder config (with --scheme) or "
        "checkpoint (.pt), torchvision:NAME, timm:NAME, path/to/file.py:factory or "
        "package.module:factory.",
    ),
]
RunDirArg = Annotated[Path, typer.Argument(help="One run's folder (OUT/<scheme>/seed<k>).")]
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
    str | None,
    typer.Option(
        help="Measure on random inputs of this shape, e.g. 3,224,224 (at most "
        f"{INPUT_LIMIT:,} values; all the inputs together at most {RANDOM_LIMIT:,})."
    ),
]
SampleOption = Annotated[
    int,
    typer.Option(
        help=f"Images (or random inputs) to measure on, at most {SAMPLE_LIMIT:,}; a run's: its "
        "training images. Without weights none are measured (one example batch at most).",
        min=2,
    ),
]
RecalibrateOption = Annotated[
    bool,
    typer.Option(
        help="Also re-estimate BN with noise off and measure again; a run's folder: as its "
        "config says, with its test accuracy before and after."
    ),
]
SaveOption = Annotated[
    Path | None,
    typer.Option(
        help="With --recalibrate: write the re-calibrated weights here, a state_dict for the "
        "same model (load it with load_state_dict, or give it to --weights)."
    ),
]
AuditFormatOption = Annotated[
    AuditFormat, typer.Option("--format", help="table, markdown or json.")
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
