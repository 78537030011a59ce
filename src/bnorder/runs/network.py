"""A run's network: the one place a model config, a scheme and the data's shape become a
model. The run loop, ``bnorder model``, ``bnorder audit`` and the rebuild of a run folder all
build it here, and every checkpoint carries the ``NetworkSpec`` it was built from, so that a
checkpoint alone rebuilds its network (as nanoGPT's carry ``model_args``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bnorder.core.files import FileRefused
from bnorder.data.catalog import DataError, DataShape, ImageData
from bnorder.data.sources import data_shape
from bnorder.nets.models import build_model, planned_parameters, size_keys
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import Scheme
from bnorder.runs.config import ConfigError, ExperimentConfig
from bnorder.runs.folder import load_checkpoint

NETWORK_KEY = "network"  # where a checkpoint keeps its NetworkSpec


# a network past this many parameters is refused before it is built: 1e9 float32 weights are
# 4 GB, and training keeps their gradients and momentum beside them (docs/commands.md)
MAX_PARAMETERS = 1_000_000_000

# where the data's shape cannot be found here: CIFAR-10's, and the caller says so
ASSUMED_SHAPE = DataShape(3, 32, 32, 10)


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a run's network is built from."""

    model: ModelConfig
    scheme: Scheme
    shape: DataShape

    def parameters(self) -> int:
        """How many parameters the network has, counted without building it."""
        shape = self.shape
        return planned_parameters(
            self.model, self.scheme, num_classes=shape.classes, in_channels=shape.channels
        )

    def check_size(self) -> None:
        """Raises ConfigError, with the count and the keys that set it, past MAX_PARAMETERS."""
        count = self.parameters()
        if count > MAX_PARAMETERS:
            keys = ", ".join(
                f"model.{key}={json.dumps(value)}" for key, value in size_keys(self.model).items()
            )
            raise ConfigError(
                f"model: {count:,} parameters, more than the {MAX_PARAMETERS:,} a network may "
                f"have (about {MAX_PARAMETERS * 4 / 1e9:.0f} GB of float32 weights); set by {keys}"
            )

    def build(self, seed: int = 0) -> nn.Module:
        """The network, its layers initialised from ``seed``; refused past MAX_PARAMETERS
        before anything is allocated."""
        self.check_size()
        return build_model(
            self.model,
            self.scheme,
            num_classes=self.shape.classes,
            in_channels=self.shape.channels,
            seed=seed,
        )

    def record(self) -> dict[str, Any]:
        """As plain values (a checkpoint holds nothing else)."""
        scheme = self.scheme
        return {
            "model": self.model.model_dump(mode="json"),
            "scheme": {
                "ops": list(scheme.ops),
                "head": list(scheme.head),
                "inner": None if scheme.inner is None else list(scheme.inner),
            },
            "shape": [self.shape.channels, self.shape.height, self.shape.width],
            "classes": self.shape.classes,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NetworkSpec:
        """Raises ValueError, KeyError or TypeError where ``record`` is not one."""
        scheme, (channels, height, width) = record["scheme"], record["shape"]
        inner = scheme.get("inner")
        inner = None if inner is None else tuple(inner)  # an empty inner is none between
        order = Scheme(tuple(scheme["ops"]), tuple(scheme["head"]), inner=inner)
        shape = DataShape(int(channels), int(height), int(width), int(record["classes"]))
        return cls(ModelConfig.model_validate(record["model"]), order, shape)


def config_network(config: ExperimentConfig, scheme: str | None) -> tuple[NetworkSpec, bool]:
    """The network the runs of ``config`` train for ``scheme`` (default: its first), and
    whether the data's shape is known here (else CIFAR-10's is assumed). Raises ConfigError
    or DataError."""
    name = scheme or next(iter(config.schemes))
    if name not in config.schemes:
        raise ConfigError(
            f"--scheme {name}: not a scheme of the config ({', '.join(config.schemes)})"
        )
    shape = data_shape(config.data)
    spec = NetworkSpec(config.model, config.schemes[name].scheme(), shape or ASSUMED_SHAPE)
    return spec, shape is not None


def check_networks(configs: Iterable[ExperimentConfig]) -> None:
    """That every scheme's network of every config (a sweep's grid points) is within
    MAX_PARAMETERS, counted once per distinct size. Raises ConfigError."""
    seen: set[str] = set()
    shapes: dict[str, DataShape] = {}  # a folder's shape reads image headers: once per data
    for config in configs:
        data = config.data.model_dump_json()
        if data not in shapes:
            shapes[data] = data_shape(config.data) or ASSUMED_SHAPE
        shape = shapes[data]
        for entry in config.schemes.values():
            spec = NetworkSpec(config.model, entry.scheme(), shape)
            # what sets the count: not the grid's dropout or learning rate, counted once
            record = spec.record() | {"model": [config.model.arch, size_keys(config.model)]}
            key = json.dumps(record, sort_keys=True)
            if key not in seen:
                seen.add(key)
                spec.check_size()


def run_network(config: ExperimentConfig, scheme: Scheme, data: ImageData) -> NetworkSpec:
    """The network of one run of ``config``, for the data it trains on."""
    return NetworkSpec(config.model, scheme, data.shape)


def load_network(checkpoint: Path) -> nn.Module:
    """The network a bnorder checkpoint was saved from, rebuilt from the checkpoint alone,
    with its weights. Raises DataError naming the file."""
    try:
        state = load_checkpoint(checkpoint)
    except FileRefused as err:  # names the file and why already
        raise DataError(str(err)) from None
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{checkpoint}: not a bnorder checkpoint ({err})") from None
    if NETWORK_KEY not in state:
        raise DataError(
            f"{checkpoint}: written before checkpoints described their network; "
            "audit its run folder instead"
        )
    try:
        network = NetworkSpec.from_record(state[NETWORK_KEY]).build()
        network.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{checkpoint}: its network cannot be rebuilt ({err})") from None
    return network
