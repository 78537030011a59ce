"""An output folder's experiment, claimed by the sweep that writes into it first: its
``config.yaml``, the resolved config, written before the first run starts and merged with the
schemes, seeds and grid values of every later sweep of the same experiment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from bnorder.core.files import atomic_write_text, file_lock, read_bounded
from bnorder.runs.config import (
    CONFIG_BYTES,
    ConfigError,
    ExperimentConfig,
    config_to_dict,
    parse_yaml,
)
from bnorder.runs.folder import CONFIG_FILE, declared_baseline, read_experiment_config
from bnorder.runs.plan import check_claim, check_grid_keys


def check_config_source(source: Path, config: ExperimentConfig) -> None:
    """That the config file being run is not OUT/config.yaml, which a sweep writes the resolved
    config to: a user's file there (a config beside its results) would be written over, its
    comments lost. bnorder's own file there may be run (the report prints ``bnorder run
    OUT/config.yaml`` to train a sweep again): it is its own resolved dump, to the byte.
    Raises ConfigError naming both."""
    output = Path(config.output)
    target = output / CONFIG_FILE
    try:
        if not (target.exists() and os.path.samefile(source, target)):
            return
        text = read_bounded(source, CONFIG_BYTES, "config").decode()
        if yaml.safe_dump(parse_yaml(text, str(source)), sort_keys=False) == text:
            return  # bnorder's dump: written over with itself and what later sweeps merge in
    except (OSError, ValueError):  # unreadable now: loading it said so, or will
        return
    raise ConfigError(
        f"{source}: this config is where bnorder writes the sweep's resolved config (output: "
        f"{output}), and would be written over, comments and all: move it out of {output}, or "
        "set output to another folder"
    )


CLAIM_LOCK = ".config.yaml.lock"  # beside config.yaml, which is replaced, not written in place


def claim_experiment(config: ExperimentConfig, overwrite: bool = False) -> None:
    """Claim the output folder for this sweep's experiment before its first run starts:
    under a lock, make_plan's checks of config.yaml again (another sweep may have claimed
    the folder since), then ``write_experiment_config``. Of two sweeps of different configs
    started at once into one folder, the second is refused as if it had started later; sweeps
    of one experiment merge. Raises ResultsConflict."""
    output = Path(config.output)
    with file_lock(output / CLAIM_LOCK, wait=True):
        earlier = read_experiment_config(output)
        check_grid_keys(config, earlier)
        if not overwrite:
            check_claim(config, earlier)
        write_experiment_config(config, earlier)


def write_experiment_config(config: ExperimentConfig, earlier: dict[str, Any] | None) -> None:
    """OUT/config.yaml: the resolved config, its schemes, seeds and grid values merged with
    those of ``earlier`` sweeps into the same folder (their config.yaml, found alike in every
    other key). The baseline and equivalence margin first declared there stand: a later sweep
    must not move them after seeing data."""
    path = Path(config.output) / CONFIG_FILE
    resolved = config_to_dict(config)
    if earlier is not None:
        resolved["schemes"] = {**_of_type(earlier, "schemes", dict), **resolved["schemes"]}
        seeds = [s for s in _of_type(earlier, "seeds", list) if isinstance(s, int)]
        resolved["seeds"] = sorted({*seeds, *resolved["seeds"]})
        resolved["baseline"] = declared_baseline(earlier) or resolved["baseline"]
        resolved["equivalence_margin"] = (
            earlier.get("equivalence_margin") or resolved["equivalence_margin"]
        )
        for key, values in _of_type(earlier, "grid", dict).items():  # the same keys (make_plan)
            values = values if isinstance(values, list) else []
            added = [v for v in resolved["grid"].get(key, []) if v not in values]
            resolved["grid"][key] = [*values, *added]
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))


def _of_type(earlier: dict[str, Any], key: str, kind: type) -> Any:
    """``earlier[key]`` where it is a ``kind``, else an empty one: a config.yaml written by
    hand (a list of schemes, one seed) merges what it can, never a TypeError."""
    value = earlier.get(key)
    return value if isinstance(value, kind) else kind()
