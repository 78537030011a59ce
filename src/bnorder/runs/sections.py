"""The experiment config's sections as pydantic models: the schema alone, with its defaults
and the checks within one config. Loading it (YAML, ``--set``, the grid) is config.py's.

Every model forbids unknown keys, so a typo stops the run instead of being ignored; a key
marked ``NotIdentity`` or ``AddedLater`` says how it counts in a run's identity.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from bnorder.core.schema import AddedLater, NotIdentity, Strict
from bnorder.data.options import DataConfig
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import CATALOGUE, Scheme, parse_scheme


class TrainConfig(Strict):
    epochs: int = Field(default=15, gt=0, le=100_000)
    batch_size: int = Field(default=256, gt=0)
    optimizer: Literal["sgd"] = "sgd"
    lr: float = Field(default=0.1, gt=0.0, le=1e6)  # far past any that trains; 1e308 overflows
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1.0, ge=0.0, le=1000.0)
    augment: bool = True
    eval_batch_size: int = Field(default=1024, gt=0)
    # what stays once a run is done
    keep_checkpoints: Annotated[Literal["last", "none", "all"], NotIdentity("what is kept")] = (
        "last"
    )
    # Variance shift of every BN layer (shift/measure.py), measured on a fixed sample of the
    # training set: every N epochs and after the last (0: after the last only).
    vshift_every: int = Field(default=1, ge=0)
    vshift_sample: int = Field(default=2000, ge=0)  # images; 0 turns the measurement off
    # After the last epoch: re-estimate BN's statistics with dropout off, and test again.
    recalibrate_bn: bool = False
    recalibration: Literal["sequential", "batch"] = "sequential"
    recalibration_sample: int | None = Field(default=None, gt=0)  # None: all training images
    # The images the shift is measured on and BN re-estimated from: augmented as in training
    # (one fixed crop and flip each), so that only the noise differs from what BN learnt; or
    # plain, as earlier versions did (then augmentation's own shift is in the figures too).
    # AddedLater("plain"), not its default: runs of earlier versions measured on plain images,
    # so they keep their hash and new runs get another
    diagnostics_images: Annotated[Literal["augmented", "plain"], AddedLater("plain")] = "augmented"
    # Speed. auto: bf16 autocast on a CUDA device that has it, else fp32; BN stays in fp32.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"  # auto: on, but off for resnet on CPU
    compile: bool = False  # torch.compile the model (its compile time goes to run.json)
    threads: Annotated[int | None, NotIdentity("changes only the order of float sums")] = Field(
        default=None, gt=0
    )  # CPU threads; None: torch's default

    @field_validator("channels_last", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, bool):  # a Literal takes 1 for True
            raise ValueError("Input should be 'auto', true or false")
        return value


# The files and folders bnorder writes beside the scheme folders (compare's, the report's),
# as file systems that ignore case see them; a markdown report's figures are report-*.png
RESERVED_NAMES = {
    "config.yaml",
    "summary.csv",
    "comparisons.csv",
    "plots",
    "report.html",
    "report.md",
}
REPORT_FIGURES = re.compile(r"report-.*\.png", re.IGNORECASE)
# The most a sweep may hold, counted before anything is expanded: far past any sweep that
# trains in reason, and short of what planning it would take minutes and gigabytes for.
MAX_RUNS = 100_000  # scheme × seed × grid point, all shards together
MAX_GRID_POINTS = 10_000
MAX_NAME = 100  # characters in a scheme name: a folder name, with room for a grid's beside it


def _scheme_name(name: str) -> str:
    # scheme names become folder names: keep them inside the output folder
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ValueError("a scheme name must be letters, digits, '_', '-' or '.'")
    if len(name) > MAX_NAME:  # found now, not as "File name too long" when a run starts
        raise ValueError(f"a scheme name is {len(name)} characters long, more than {MAX_NAME}")
    if name.casefold() in RESERVED_NAMES or REPORT_FIGURES.fullmatch(name):
        raise ValueError(f"{name!r} is reserved for a file in the output folder")
    return name


def _scheme_ops(ops: list[str]) -> list[str]:
    return list(parse_scheme(ops))


SchemeName = Annotated[str, AfterValidator(_scheme_name)]
SchemeOps = Annotated[list[str], AfterValidator(_scheme_ops)]


class SchemeSpec(Strict):
    """A scheme as configs write it: a token list, a catalogue name, or ``{ops, head}``."""

    ops: SchemeOps
    head: SchemeOps = Field(default=[])  # applied once, after global pooling, before the classifier
    # between the two convs of a residual block or DenseNet layer, in place of ops there
    inner: SchemeOps | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"ops": value}
        if isinstance(value, str):
            scheme = CATALOGUE.get(value)
            if scheme is None:
                raise ValueError(
                    f"unknown scheme {value!r} (catalogue: {', '.join(CATALOGUE)}); "
                    "or give a list of tokens"
                )
            inner = None if scheme.inner is None else list(scheme.inner)
            return {"ops": list(scheme.ops), "head": list(scheme.head), "inner": inner}
        return value

    def scheme(self) -> Scheme:
        """As the one frozen value the other stages pass whole."""
        inner = None if self.inner is None else tuple(self.inner)
        return Scheme(tuple(self.ops), tuple(self.head), inner=inner)


DEFAULT_SCHEMES = ["bn_relu_drop", "relu_drop_bn", "bn_only"]


class ExperimentConfig(Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    # name → scheme; a plain list of catalogue names is short for {name: name}
    schemes: dict[SchemeName, SchemeSpec] = Field(default=DEFAULT_SCHEMES, min_length=1)
    # the control every scheme is tested against, declared before any run: compare's verdicts
    # against it are confirmatory. None: the first scheme listed.
    baseline: Annotated[str | None, NotIdentity("how compare reads runs, not how they train")] = (
        Field(default=None, validate_default=True)
    )
    # in accuracy points: compare calls a scheme equivalent to the baseline only where two
    # one-sided tests put the difference inside ±margin; declared, like the baseline, up front
    equivalence_margin: Annotated[float, NotIdentity("a test's margin")] = Field(
        default=1.0, gt=0.0, le=100.0
    )
    train: TrainConfig = TrainConfig()
    seeds: list[Annotated[int, Field(ge=0, lt=2**31)]] = Field(default=[0], min_length=1)
    # as written (auto): the device type it resolved to takes its place in the identity
    device: Annotated[str, NotIdentity("replaced by the device type")] = "auto"
    output: Annotated[str, NotIdentity("where results go")] = "results/cifar"
    # dotted key → values: one sweep per combination, e.g. {model.dropout: [0.1, 0.3, 0.5]}
    grid: dict[str, list[Any]] = Field(default={})

    @field_validator("schemes", mode="before")
    @classmethod
    def _catalogue_names(cls, schemes: Any) -> Any:
        if not isinstance(schemes, list):
            return schemes
        if not all(isinstance(name, str) for name in schemes):
            raise ValueError("a list of schemes must hold catalogue names")
        duplicates = sorted(name for name, n in Counter(schemes).items() if n > 1)
        if duplicates:
            raise ValueError(f"scheme {duplicates[0]!r} is listed twice")
        return {name: name for name in schemes}

    @field_validator("schemes")
    @classmethod
    def _distinct_folders(cls, schemes: dict[str, SchemeSpec]) -> dict[str, SchemeSpec]:
        folded = Counter(name.casefold() for name in schemes)  # one folder on macOS and Windows
        clash = sorted(n for n in schemes if folded[n.casefold()] > 1)
        if clash:
            raise ValueError(f"scheme names {clash} differ only in case")
        return schemes

    @field_validator("baseline")
    @classmethod
    def _declared_baseline(cls, baseline: str | None, info: ValidationInfo) -> str | None:
        schemes = info.data.get("schemes")
        if schemes is None:  # the schemes were invalid: that error is the one to report
            return baseline
        if baseline is not None and (info.context or {}).get("baseline_checked"):
            return baseline  # checked against the whole config (a grid point, --schemes)
        if baseline is None:
            return next(iter(schemes))
        if baseline not in schemes:
            raise ValueError(f"not one of the schemes ({', '.join(schemes)})")
        return baseline

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            section, _, leaf = key.partition(".")
            fields = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
            if key == "model.preset":  # keys given win over a preset: sweep those keys
                raise ValueError(
                    "'model.preset' cannot be swept; sweep model.arch, model.depth, "
                    "model.widen_factor or model.growth_rate instead"
                )
            if section not in fields or leaf not in fields[section].model_fields:
                raise ValueError(
                    f"{key!r} is not a data, model or train key (schemes and seeds are "
                    "swept already)"
                )
            if not values:
                raise ValueError(f"{key!r} has no values")
        return grid

    @model_validator(mode="after")
    def _within_limits(self) -> ExperimentConfig:
        """Counted, not expanded: a few lines of grid can stand for millions of runs."""
        points = math.prod(len(values) for values in self.grid.values())
        if points > MAX_GRID_POINTS:
            raise ValueError(
                f"grid: {points:,} grid points, more than the {MAX_GRID_POINTS:,} a sweep may "
                "have: sweep fewer values, or split it into several configs"
            )
        runs = points * len(self.schemes) * len(self.seeds)
        if runs > MAX_RUNS:
            raise ValueError(
                f"{runs:,} runs (schemes × seeds × grid points), more than the {MAX_RUNS:,} a "
                "sweep may have: split it into several configs"
            )
        return self

    @model_validator(mode="after")
    def _inner_ops_have_a_place(self) -> ExperimentConfig:
        check_inner_ops(self)
        return self

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be unique")
        return seeds

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", device):  # torch's index: 64 bits
            raise ValueError("device must be auto, cpu, cuda, cuda:N (N < 1000) or mps")
        return device


def check_inner_ops(config: ExperimentConfig) -> None:
    """A scheme's ``inner`` ops go between the two convs of a residual block or DenseNet
    layer: a VGG has no such place, and would train the scheme without them."""
    if config.model.arch != "vgg":
        return
    for name, spec in config.schemes.items():
        if spec.inner is not None:
            raise ValueError(
                f"schemes.{name}: inner ops go between the two convs of a residual block or "
                "DenseNet layer; model.arch vgg has none (use wrn, resnet or densenet)"
            )
