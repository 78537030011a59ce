"""Experiment configuration: schema, YAML loading and command-line overrides.

Precedence follows nanoGPT: defaults (the schema below) → the YAML file → ``--set`` overrides.
Every model forbids unknown keys, so a typo stops the run instead of being ignored.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bnorder.core.errors import BnorderError
from bnorder.core.files import FileRefused, read_bounded
from bnorder.core.schema import AddedLater, NotIdentity, Strict
from bnorder.data.options import DataConfig
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import CATALOGUE, Scheme, parse_scheme


class ConfigError(BnorderError, ValueError):
    """A config that cannot be used; the message names the key path and the bad value."""


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


RESERVED_NAMES = {"config.yaml", "summary.csv", "comparisons.csv", "plots"}  # beside schemes


def _scheme_name(name: str) -> str:
    # scheme names become folder names: keep them inside the output folder
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ValueError("a scheme name must be letters, digits, '_', '-' or '.'")
    if name in RESERVED_NAMES:
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
        duplicates = sorted({name for name in schemes if schemes.count(name) > 1})
        if duplicates:
            raise ValueError(f"scheme {duplicates[0]!r} is listed twice")
        return {name: name for name in schemes}

    @field_validator("schemes")
    @classmethod
    def _distinct_folders(cls, schemes: dict[str, SchemeSpec]) -> dict[str, SchemeSpec]:
        folded = [name.casefold() for name in schemes]  # one folder on macOS and Windows
        clash = sorted({n for n in schemes if folded.count(n.casefold()) > 1})
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


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-4`` as a float (YAML 1.1 insists on ``5.0e-4``) and refuses
    duplicate keys, which plain YAML silently resolves to the last one (two schemes of one name)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):  # !!set on a list: the base says why
            return super().construct_mapping(node, deep=deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base loader says so below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_excerpt(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


CONFIG_BYTES = 4 * 2**20  # a config is a few kB; this leaves room for long grids
MAX_NODES = 1_000_000  # values in a document once its aliases are expanded
MAX_DEPTH = 64  # levels of nesting


def _excerpt(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: user input in a one-line message."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's digit limit (a long hex number in YAML)
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a document that nests deeper than MAX_DEPTH or holds more than MAX_NODES values
    once aliases are expanded (an alias bomb: a few lines, billions of values), counted on
    the node graph, in time linear in its size, before anything is built from it. Both are
    measured from the bottom up (size and height of each node), so an alias counts the
    whole value it stands for wherever it appears."""
    sizes: dict[int, int] = {}  # node id → its expanded size
    heights: dict[int, int] = {}  # node id → levels of nesting in its expanded value
    open_nodes: set[int] = set()  # on the current path: met again, an alias loops
    stack = [root]
    while stack:
        node = stack.pop()
        children = _children(node)
        if id(node) in open_nodes:  # all children done: size and height from theirs
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            heights[id(node)] = 1 + max((heights[id(c)] for c in children), default=0)
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(
                    f"{source}: more than {MAX_NODES:,} values once aliases are expanded"
                )
            if heights[id(node)] > MAX_DEPTH:
                raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep")
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append(node)
        for child in children:
            if id(child) in open_nodes:
                raise ConfigError(f"{source}: an alias refers to a value that contains it")
            stack.append(child)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """YAML text as Python values, with the loader above; a document too big or too deep once
    its aliases are expanded, or holding a number Python will not build, is a ConfigError."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except ConfigError:
        raise
    except RecursionError:  # composing nests in Python: deeper than its stack allows
        raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:  # a 5,000-digit integer, say
        raise ConfigError(f"{source}: not a usable value ({_excerpt(str(err))})") from None
    finally:
        loader.dispose()


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.epochs=2")
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an empty section in the YAML file
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            path = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: {path} is not a section")
        node = child
    node[parts[-1]] = parse_yaml(value, source=f"--set {key}")


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed beside the last element of ``loc``, for "did you mean"."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if p != "[key]")
    path = ".".join(str(p) for p in loc) or "<top level>"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown key{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names the keys
        return message
    return f"{path}: {message} (got {_excerpt(first['input'])})"


def build_config(raw: Any, source: str = "config", *, derived: bool = False) -> ExperimentConfig:
    """``raw`` validated. ``derived``: a config made from a valid one (a grid point), whose
    baseline was checked against the whole scheme list and may not be among its schemes."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw, context={"baseline_checked": derived})
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_error(err)}") from None


def load_config(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    schemes: str | None = None,
    seeds: str | None = None,
    device: str | None = None,
    output: str | Path | None = None,
) -> ExperimentConfig:
    """Defaults, then the YAML file at ``path``, then each ``key=value`` override, then the
    command line's short options: ``seeds`` ("0,1,2"), ``device``, ``output``, and ``schemes``
    ("a,b": only these, in this order)."""
    overrides = list(overrides)
    for key, value in (("seeds", seeds), ("device", device), ("output", output)):
        if value is not None:
            overrides.append(
                f"{key}=[{value}]" if key == "seeds" else f"{key}={json.dumps(str(value))}"
            )
    config = _load_file(Path(path), overrides)
    if schemes is None:
        return config
    return select_schemes(config, [s.strip() for s in schemes.split(",") if s.strip()])


def _load_file(path: Path, overrides: list[str]) -> ExperimentConfig:
    try:
        text = read_bounded(path, CONFIG_BYTES, "config").decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    except FileRefused as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    raw = parse_yaml(text, source=str(path))
    if not isinstance(raw, dict | None):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    raw = raw or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return build_config(raw, source=str(path))


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


@dataclass(frozen=True)
class GridPoint:
    """One combination of a config's grid: its values, a readable folder label, and the config
    with those values set (and no grid of its own)."""

    values: dict[str, Any]
    label: str
    config: ExperimentConfig


def _label_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ""))
    return re.sub(r"[^A-Za-z0-9_.,+-]", "", text)


def expand_grid(config: ExperimentConfig) -> list[GridPoint]:
    """The config's grid as its combinations, in the grid's order; each point's output is a
    sub-folder named after its values (``dropout=0.3,arch=vgg``). No grid: one point."""
    if not config.grid:
        return [GridPoint({}, "", config)]
    keys = list(config.grid)
    leaves = [k.rpartition(".")[2] for k in keys]
    names = leaves if len(set(leaves)) == len(leaves) else keys  # short where unambiguous
    points = []
    for combo in itertools.product(*(config.grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        label = ",".join(f"{n}={_label_value(v)}" for n, v in zip(names, combo, strict=True))
        raw = config.model_dump(mode="json")
        raw["grid"], raw["output"] = {}, str(Path(config.output) / label)
        for key, value in values.items():
            section, leaf = key.split(".")
            raw[section][leaf] = value
        try:
            point = build_config(raw, source="grid", derived=True)
        except ConfigError as err:
            raise ConfigError(f"{err} at grid point {label}") from None
        points.append(GridPoint(values, label, point))
    labels = [p.label.casefold() for p in points]  # one folder each, on every file system
    clash = sorted({p.label for p in points if labels.count(p.label.casefold()) > 1})
    if clash:
        raise ConfigError(f"grid: values give the same folder name {clash[0]!r}: make them differ")
    return points


def select_schemes(config: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """The config's schemes of these names, in the order given; a name the config lacks is
    taken from the catalogue."""
    if not names:
        raise ConfigError("--schemes: no scheme named")
    unknown = [n for n in names if n not in config.schemes and n not in CATALOGUE]
    if unknown:
        raise ConfigError(
            f"--schemes: unknown scheme {unknown[0]!r} (the config has: "
            f"{', '.join(config.schemes)}; the catalogue: {', '.join(CATALOGUE)})"
        )
    chosen = {n: config.schemes.get(n) or SchemeSpec.model_validate(n) for n in names}
    selected = config.model_copy(update={"schemes": chosen})
    try:
        check_inner_ops(selected)
    except ValueError as err:
        raise ConfigError(f"--schemes: {err}") from None
    return selected
