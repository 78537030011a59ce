"""From a config to a plan: the runs of a sweep (scheme × seed × grid point), a shard's part of
them, each run's identity, and which runs the output folder holds done already.

A run's identity is its resolved config less the keys that do not change its numbers, plus
the type of device it trains on. Runs of equal identity are comparable; a folder holding runs
of another identity is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from bnorder.core.errors import BnorderError, PathError
from bnorder.core.files import temporary_sibling
from bnorder.core.schema import AddedLater, NotIdentity, identity_marks
from bnorder.data.catalog import DATASETS
from bnorder.data.loaders import check_subsets
from bnorder.data.sources import locate_data, missing_data
from bnorder.nets.schemes import Scheme, unread_keys
from bnorder.runs.config import (
    ConfigError,
    ExperimentConfig,
    GridPoint,
    config_to_dict,
    expand_grid,
)
from bnorder.runs.folder import CONFIG_FILE, read_experiment_config, run_files
from bnorder.runs.network import check_networks
from bnorder.runs.records import RunInfo, read_info
from bnorder.runs.train import resolve_device


class ResultsConflict(BnorderError, RuntimeError):
    """The output folder holds runs made from a different config."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a scheme's ops, a seed, and the grid point it belongs to."""

    scheme: str  # its name
    order: Scheme  # what it places where
    seed: int
    label: str = ""  # the grid point's folder, "" without a grid
    grid: tuple[tuple[str, str], ...] = ()  # the grid point's values, JSON-encoded (hashable)

    @property
    def name(self) -> str:
        return f"{self.label}/{self.scheme}/seed{self.seed}".lstrip("/")

    @property
    def grid_values(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.grid}


def plan_runs(config: ExperimentConfig, point: GridPoint | None = None) -> list[RunSpec]:
    """Seed-major, so that an early stop still leaves every scheme with the same seeds."""
    label = point.label if point else ""
    grid = tuple((k, json.dumps(v)) for k, v in point.values.items()) if point else ()
    return [
        RunSpec(name, spec.scheme(), seed, label, grid)
        for seed in config.seeds
        for name, spec in config.schemes.items()
    ]


# ---------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 0) of ``count`` disjoint parts of a sweep's runs."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ConfigError(f"--shard: {text!r} is not K/N (for example 0/4)")
        index, count = int(match[1]), int(match[2])
        if not 0 <= index < count:
            raise ConfigError(f"--shard: {text!r}: K counts from 0 and must be below N")
        return cls(index, count)

    @classmethod
    def from_slurm(cls, environ: Mapping[str, str]) -> Shard | None:
        """This array task's shard, where a Slurm job array runs: task IDs first, first+step,
        … are shards 0, 1, … of SLURM_ARRAY_TASK_COUNT."""
        if "SLURM_ARRAY_TASK_ID" not in environ:
            return None
        try:
            task = int(environ["SLURM_ARRAY_TASK_ID"])
            count = int(environ["SLURM_ARRAY_TASK_COUNT"])
            first = int(environ.get("SLURM_ARRAY_TASK_MIN") or 0)
            step = int(environ.get("SLURM_ARRAY_TASK_STEP") or 1)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"SLURM_ARRAY_TASK_*: unreadable ({err}); pass --shard K/N") from None
        index, off = divmod(task - first, step)
        if off or not 0 <= index < count:
            raise ConfigError(
                f"SLURM_ARRAY_TASK_ID={task}: not one of {count} evenly spaced array tasks from "
                f"{first}; pass --shard K/N"
            )
        return cls(index, count)


def _shard_key(run: RunSpec) -> str:
    """What names a run, whatever the order of the config's keys and lists."""
    named = [sorted(run.grid_values.items()), run.scheme, run.seed]
    return hashlib.sha256(json.dumps(named).encode()).hexdigest()


def shard_runs(runs: list[RunSpec], shard: Shard) -> list[RunSpec]:
    """The shard's part of ``runs``: the runs ranked by a hash of their grid values, scheme and
    seed (not of the config's key order), then dealt round robin, so that the parts are
    disjoint, differ in size by at most one, and mix schemes (which differ in cost). A run's
    part depends on the whole plan: every shard must be given the same config and options."""
    ranked = sorted(runs, key=_shard_key)
    mine = set(ranked[shard.index :: shard.count])
    return [run for run in runs if run in mine]  # in the plan's (seed-major) order


# ---------------------------------------------------------------- identity


def run_config(config: ExperimentConfig, run: RunSpec) -> dict[str, Any]:
    """One run's resolved config, saved in its run.json: the output folder and the baseline,
    which belong to the experiment (config.yaml), are not part of it."""
    # dumped with this run's seed alone: a dump of the sweep's every seed per run is quadratic
    resolved = config_to_dict(config.model_copy(update={"seeds": [run.seed], "schemes": {}}))
    order = run.order
    scheme: dict[str, Any] = {"ops": list(order.ops), "head": list(order.head)}
    if order.inner is not None:  # absent otherwise, as in runs from before it existed
        scheme["inner"] = list(order.inner)
    resolved["schemes"] = {run.scheme: scheme}
    resolved["seeds"] = [run.seed]
    del resolved["output"], resolved["baseline"], resolved["equivalence_margin"]
    return resolved


def _flatten(data: Any) -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys, in order (an empty dict is a value), written
    into one dict: a 5,000-run plan flattens some 20,000 configs."""
    if not isinstance(data, dict) or not data:
        return {"": data}
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                walk(value, name)
            else:
                flat[name] = value

    walk(data, "")
    return flat


# How each key counts in a run's identity is marked on the config field itself (NotIdentity,
# AddedLater in core/schema.py); these are those marks, collected once.
_MARKS = identity_marks(ExperimentConfig)
NOT_IDENTITY = {key for key, mark in _MARKS.items() if isinstance(mark, NotIdentity)}
LATER_KEYS = {key: mark.earlier for key, mark in _MARKS.items() if isinstance(mark, AddedLater)}


def run_identity(config: dict[str, Any], device_type: str) -> dict[str, Any]:
    """What makes two runs the same run, flattened to dotted keys: ``config_identity`` less
    the keys its one scheme does not read (``schemes.unread_keys``: bn_only at dropout 0.1 and
    at 0.5 is one run, trained once and shared by both grid points)."""
    return _less_unread(config, config_identity(config, device_type))


def _less_unread(config: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config_identity`` less the keys its one scheme does not read."""
    schemes = config.get("schemes")
    if not isinstance(schemes, dict) or len(schemes) != 1:
        return identity
    (spec,) = schemes.values()
    if not isinstance(spec, dict):
        return identity
    inner = spec.get("inner")
    inner = tuple(inner) if isinstance(inner, list) else None
    order = Scheme(tuple(spec.get("ops") or ()), tuple(spec.get("head") or ()), inner=inner)
    unread = unread_keys(order)
    return {key: value for key, value in identity.items() if key not in unread}


def config_identity(config: dict[str, Any], device_type: str) -> dict[str, Any]:
    """What makes two runs comparable, flattened to dotted keys: a run's config, less the keys
    that do not change its numbers, plus the type of device it ran on."""
    flat = _flatten(config)
    if flat.get("data.augment_flip", True) is None:  # the data set's choice: what it chose counts
        flat["data.augment_flip"] = DATASETS[flat.get("data.dataset", "cifar10")].flip
    flat = {
        key: value
        for key, value in flat.items()
        if key not in NOT_IDENTITY and (key not in LATER_KEYS or value != LATER_KEYS[key])
    }
    if flat.get("data.pipeline", "device") == "device":
        flat.pop("data.workers", None)  # only the torchvision pipeline has workers
    return {**flat, "device": device_type}


def experiment_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config_identity`` less its scheme and seed: equal for every run of one
    experiment (one grid point)."""
    return {k: v for k, v in identity.items() if not k.startswith(("schemes.", "seeds"))}


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def stored_run_hash(info: RunInfo) -> str | None:
    """The run identity's hash of a stored run, recomputed from its config by this version's
    rule (not the hash it recorded, which an older rule made); None where unreadable."""
    try:
        return fingerprint(run_identity(info.config, torch.device(info.device).type))
    except (ValueError, KeyError, TypeError, RuntimeError):
        return None


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def completed_runs(
    config: ExperimentConfig, identities: dict[RunSpec, dict[str, Any]], device: torch.device,
    overwrite: bool,
) -> set[RunSpec]:  # fmt: skip
    """The runs of ``identities`` (each planned run, with its ``run_identity``) that the
    output folder holds final already, with this very config.

    Raises ResultsConflict, before anything is trained or written, where the output folder
    holds runs of a different config: a run of this sweep (unless ``overwrite``), or any other
    run (always: its numbers would be compared with these as if they were alike).
    """
    planned = {(run.scheme, run.seed): run for run in identities}
    ours = experiment_identity(config_identity(config_to_dict(config), device.type))
    done, conflicts = set(), []
    for run_file in run_files(config.output):
        try:
            info = read_info(run_file)
            if not info.config:
                raise ValueError("no config")
            identity = config_identity(info.config, torch.device(info.device).type)
            stored, theirs = _less_unread(info.config, identity), experiment_identity(identity)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            continue  # unreadable: rerun if planned, and compare skips it
        run = planned.get((info.scheme, info.seed))
        if run is None:
            changed = differing_keys(theirs, ours)
            if changed:
                conflicts.append(f"{info.scheme}/seed{info.seed} ({', '.join(changed[:4])})")
            continue
        changed = differing_keys(stored, identities[run])
        if changed and not overwrite:
            conflicts.append(f"{run.name} ({', '.join(changed[:4])})")
        elif not changed and info.done:
            done.add(run)
    if conflicts:
        raise ResultsConflict(
            f"{config.output} holds runs made with a different config: {'; '.join(conflicts)}. "
            "Use another --out (--overwrite replaces runs of this sweep only)."
        )
    return done


# ---------------------------------------------------------------- the plan


class ExecutorKind(str, Enum):
    local = "local"
    ray = "ray"


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs: where (workers, devices, a Ray cluster), which part (a shard), and
    what to do with runs already there. `bnorder run` takes all of it, `plan` the shard,
    `validate` the defaults; ``make_plan`` and ``make_executor`` read it."""

    overwrite: bool = False  # replace this sweep's runs made with another config
    fail_fast: bool = False  # start no run after one fails
    shard: Shard | None = None
    workers: int | None = None  # local worker processes; None: one, or one per device
    devices: tuple[str, ...] = ()  # dealt to the workers round robin
    executor: ExecutorKind = ExecutorKind.local
    ray_address: str | None = None
    ray_cpus: int | None = None
    ray_gpus: float | None = None


Locate = Callable[[str, str], "tuple[str, Path] | None"]  # (root, dataset) → layout, path


@dataclass
class Plan:
    """What a sweep will do, checked before any training."""

    runs: list[RunSpec]  # this shard's runs (all of them without a shard)
    device: torch.device
    done: set[RunSpec]  # completed earlier with this config: skipped
    data_location: str  # where the data will come from, in words
    configs: dict[str, ExperimentConfig]  # grid label → that point's config ("" without grid)
    total: int  # runs in the whole sweep, all shards together
    shard: Shard | None = None

    @property
    def todo(self) -> list[RunSpec]:
        return [run for run in self.runs if run not in self.done]


def _data_location(config: ExperimentConfig, locate: Locate) -> str:
    found = locate(config.data.root, config.data.dataset)
    if found is not None:
        return f"{found[0]} at {found[1]}"
    if config.data.download:
        return f"to be downloaded into {config.data.root}"
    raise missing_data(Path(config.data.root), config.data.dataset)


def _check_data(configs: list[ExperimentConfig], locate: Locate) -> str:
    """Every grid point's data (a grid over data.root may name a folder that is not there)
    and its subsets, where the splits' sizes are known without decoding; where the data will
    come from, in words."""
    location = "; ".join(dict.fromkeys(_data_location(c, locate) for c in configs))
    for data in {c.data.model_dump_json(): c.data for c in configs}.values():
        check_subsets(data)
    return location


def check_writable(output: str | Path) -> None:
    """That runs can write into ``output`` (or the folder it will be made in): a temporary
    file is made there and removed. Raises PathError naming the folder."""
    folder = Path(output)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = temporary_sibling(folder / ".bnorder-write-test")
    try:
        probe.write_bytes(b"")
    except OSError as err:
        raise PathError(f"{folder}: cannot write there ({err.strerror})") from None
    probe.unlink(missing_ok=True)


def make_plan(
    config: ExperimentConfig,
    device: torch.device | None = None,
    options: SweepOptions | None = None,
    *,
    locate: Locate = locate_data,
) -> Plan:
    """Every check that needs no training: the data is there (or may be downloaded), the
    output folder is a folder, holds no runs of another config and is no other config's
    (config.yaml). ``device``: where the runs
    will train (its type is part of their identity; default: the config's, which must exist
    here); ``options``: the shard, and whether runs of another config may be replaced;
    ``locate``: finds the data where the runs will read it. Raises ConfigError, DataError or
    ResultsConflict."""
    device = device or resolve_device(config.device)
    options = options or SweepOptions()
    earlier = _earlier_experiment(config)
    identities: dict[RunSpec, dict[str, Any]] = {}  # each run's, computed once
    done: set[RunSpec] = set()
    configs = {}
    for point in expand_grid(config):
        point_runs = plan_runs(point.config, point if config.grid else None)
        ours = {r: run_identity(run_config(point.config, r), device.type) for r in point_runs}
        done |= completed_runs(point.config, ours, device, options.overwrite)
        identities |= ours
        configs[point.label] = point.config
    if not options.overwrite:  # after the runs: a conflict they show names them
        check_claim(config, earlier)
    runs = once_each(identities, done)
    rank = {seed: i for i, seed in enumerate(config.seeds)}  # a dict: list.index is quadratic
    runs.sort(key=lambda run: rank[run.seed])  # seed-major across the grid too
    total = len(runs)
    if options.shard is not None:
        runs = shard_runs(runs, options.shard)
    check_networks(configs.values())  # before the data: counted from the config alone
    location = _check_data(list(configs.values()), locate)
    return Plan(runs, device, done & set(runs), location, configs, total, options.shard)


def _earlier_experiment(config: ExperimentConfig) -> dict[str, Any] | None:
    """The config.yaml of the output folder, which must be a folder, checked for its grid
    keys; None where there is none."""
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} exists and is not a folder")
    earlier = read_experiment_config(output)
    check_grid_keys(config, earlier)
    return earlier


def once_each(identities: dict[RunSpec, dict[str, Any]], done: set[RunSpec]) -> list[RunSpec]:
    """The runs of ``identities`` (in order, each with its ``run_identity``), each trained
    once: grid points that differ only in keys a scheme does not read share one run of it per
    seed, in the folder of one of them: one where it is done already (older versions trained
    it at every point), else the one with the lowest grid values, whatever the order the
    config lists them in (so shards agree). compare shows it at each of them."""
    same: dict[str, list[RunSpec]] = {}
    for run, identity in identities.items():
        same.setdefault(fingerprint(identity), []).append(run)
    kept = {
        min(group, key=lambda run: (run not in done, json.dumps(sorted(run.grid))))
        for group in same.values()
    }
    return [run for run in identities if run in kept]


def check_grid_keys(config: ExperimentConfig, earlier: dict[str, Any] | None) -> None:
    """A grid sweep and a plain one, or grids over other keys, never share an output folder:
    their runs would lie side by side and config.yaml describe only the last. Raises
    ResultsConflict."""
    if earlier is None:
        return
    grid = earlier.get("grid")
    theirs, ours = sorted(grid if isinstance(grid, dict) else {}), sorted(config.grid)
    if theirs != ours:

        def sweep(keys: list[str]) -> str:
            return f"a grid over {', '.join(keys)}" if keys else "a sweep without a grid"

        raise ResultsConflict(
            f"{config.output} holds {sweep(theirs)}, and this is {sweep(ours)}: use another --out"
        )


def _claimed_keys(resolved: dict[str, Any]) -> dict[str, Any]:
    """What every sweep into one folder must agree on, from a resolved config (config.yaml's
    or a sweep's): its experiment identity less the device (config.yaml does not say the type
    its runs trained on; their run.json does) and the keys its grid sweeps (each grid point
    sets its own). Schemes, seeds and grid values merge."""
    grid = resolved.get("grid")
    swept = set(grid) if isinstance(grid, dict) else set()
    unswept = {key: value for key, value in resolved.items() if key != "grid"}
    identity = experiment_identity(config_identity(unswept, ""))
    return {key: value for key, value in identity.items() if key not in swept | {"device"}}


def check_claim(config: ExperimentConfig, earlier: dict[str, Any] | None) -> None:
    """That the experiment the output folder's config.yaml (``earlier``) declares is this
    config's, but for schemes, seeds and grid values: a folder claimed by a sweep of another
    config is refused, whether its runs are there yet or not. Raises ResultsConflict."""
    if earlier is None:
        return
    try:
        theirs = _claimed_keys(earlier)
    except (KeyError, TypeError, ValueError, AttributeError):
        return  # not a config this version reads: written anew, as before claims
    ours = _claimed_keys(config_to_dict(config))
    # a key one side lacks (a file of another version) is unknown there, not a difference
    changed = [key for key in sorted(theirs.keys() & ours.keys()) if theirs[key] != ours[key]]
    if changed:
        raise ResultsConflict(
            f"{config.output} is the folder of a sweep of a different config ({CONFIG_FILE}: "
            f"{', '.join(changed[:4])}). Use another --out (--overwrite replaces runs of this "
            "sweep only)."
        )
