"""A run's network: the one place a model config, a scheme and the data's shape become a
model. The run loop, ``bnorder model``, ``bnorder audit`` and the rebuild of a run folder all
build it here, and every checkpoint carries the ``NetworkSpec`` it was built from, so that a
checkpoint alone rebuilds its network (as nanoGPT's carry ``model_args``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bnorder.data.catalog import DATASETS, DataError, ImageData
from bnorder.data.options import DataConfig
from bnorder.data.sources import locate_data, read_data
from bnorder.nets.models import build_model
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import Scheme
from bnorder.runs.config import ConfigError, ExperimentConfig
from bnorder.runs.records import load_checkpoint

NETWORK_KEY = "network"  # where a checkpoint keeps its NetworkSpec


@dataclass(frozen=True)
class DataShape:
    """What a network must fit: its inputs' channels and side, and the number of classes."""

    channels: int
    height: int
    width: int
    classes: int

    @classmethod
    def of(cls, data: ImageData) -> DataShape:
        channels, height, width = data.image_shape
        return cls(channels, height, width, len(data.classes))


# where the data cannot be read here: CIFAR-10's shape, and the caller says so
ASSUMED_SHAPE = DataShape(3, 32, 32, 10)


def data_shape(config: DataConfig) -> DataShape | None:
    """The shape of the data ``config`` names, without training on it: fixed for CIFAR and
    SVHN; a folder data set's is read (decoded once, into the cache runs use too). None where
    the data is not here."""
    kind = DATASETS[config.dataset]
    if kind.fixed_size is not None and kind.classes is not None:
        return DataShape(3, kind.fixed_size, kind.fixed_size, kind.classes)
    if locate_data(config.root, config.dataset) is None:
        return None
    data = read_data(
        config.root, config.dataset, cache_dir=config.cache_dir, image_size=config.image_size
    )
    return DataShape.of(data)


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a run's network is built from."""

    model: ModelConfig
    scheme: Scheme
    shape: DataShape

    def build(self, seed: int = 0) -> nn.Module:
        """The network, its layers initialised from ``seed``."""
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
        order = Scheme(tuple(scheme["ops"]), tuple(scheme["head"]), inner=inner and tuple(inner))
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


def run_network(config: ExperimentConfig, scheme: Scheme, data: ImageData) -> NetworkSpec:
    """The network of one run of ``config``, for the data it trains on."""
    return NetworkSpec(config.model, scheme, DataShape.of(data))


def load_network(checkpoint: Path) -> nn.Module:
    """The network a bnorder checkpoint was saved from, rebuilt from the checkpoint alone,
    with its weights. Raises DataError naming the file."""
    try:
        state = load_checkpoint(checkpoint)
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
