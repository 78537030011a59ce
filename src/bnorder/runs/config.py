"""Experiment configuration: YAML loading, command-line overrides and the grid; the schema
itself is sections.py's, whose models are named here too (``from bnorder.runs.config
import ExperimentConfig``).

Precedence follows nanoGPT: defaults (the schema) → the YAML file → ``--set`` overrides.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bnorder.core.errors import BnorderError
from bnorder.core.files import FileRefused, read_bounded
from bnorder.data.options import DataConfig
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import CATALOGUE
from bnorder.runs.sections import (
    ExperimentConfig,
    SchemeSpec,
    TrainConfig,
    check_inner_ops,
)

# this module's names, and the schema's that other modules import from here with them
__all__ = [
    "CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_GRID_LABEL",
    "MAX_NODES",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "GridPoint",
    "ModelConfig",
    "SchemeSpec",
    "TrainConfig",
    "apply_override",
    "build_config",
    "check_inner_ops",
    "config_to_dict",
    "expand_grid",
    "load_config",
    "parse_yaml",
    "select_schemes",
]


class ConfigError(BnorderError, ValueError):
    """A config that cannot be used; the message names the key path and the bad value."""


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
MAX_GRID_LABEL = 200  # characters in a grid point's folder name (file systems take 255 bytes)


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
        if len(label) > MAX_GRID_LABEL:  # found now, not as "File name too long" in a run
            raise ConfigError(
                f"grid: the folder name of point {label[:40]}… is {len(label)} characters "
                f"long, more than {MAX_GRID_LABEL}: sweep shorter values"
            )
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
    labels = Counter(p.label.casefold() for p in points)  # one folder each, on every file system
    clash = sorted({p.label for p in points if labels[p.label.casefold()] > 1})
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
