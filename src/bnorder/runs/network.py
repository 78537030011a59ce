"""A run's network: the one place a config, a scheme and the data's shape become a model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnorder.data.sources import class_count
from bnorder.nets.models import build_model
from bnorder.runs.config import ConfigError, load_config


def config_network(config_path: Path, scheme: str | None) -> nn.Module:
    """The network the runs of the config at ``config_path`` train for ``scheme`` (default:
    its first). Raises ConfigError."""
    config = load_config(config_path)
    name = scheme or next(iter(config.schemes))
    if name not in config.schemes:
        raise ConfigError(f"--scheme {name}: not in {config_path} ({', '.join(config.schemes)})")
    spec = config.schemes[name]
    classes = class_count(config.data.root, config.data.dataset) or 10  # a run's, for --weights
    return build_model(
        config.model, spec.ops, head=spec.head, inner=spec.inner, num_classes=classes
    )
