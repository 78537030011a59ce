"""What counts as training noise and what as BatchNorm: the one definition the shift
measurement, BN re-calibration and the audit all use. A new noise kind is added here (and to
the examples of tests/test_noise_kinds.py, which fails until it is)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from bnorder.nets.layers import TrainingNoise

# Modules, by class: torch's dropouts (Dropout, Dropout1d/2d/3d, AlphaDropout,
# FeatureAlphaDropout all derive from _DropoutNd) and bnorder's own noise (Gaussian, Uout).
NOISE_CLASSES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, TrainingNoise)
# Modules, by class name, so that neither library need be imported: stochastic depth as
# torchvision (StochasticDepth) and timm (DropPath) name it.
NOISE_NAMES = {"StochasticDepth": "stochastic depth", "DropPath": "drop path"}
# Functions a module's forward may call (seen where the model traces with torch.fx).
NOISE_FUNCTIONS = {F.dropout: "F.dropout", F.dropout2d: "F.dropout2d", F.alpha_dropout: "F.alpha"}
# Where each kind keeps its rate.
RATE_ATTRIBUTES = ("p", "drop_prob", "strength")


def noise_kind(module: nn.Module) -> str | None:
    """What kind of training noise ``module`` is (its class name, or how it is known), or None:
    not noise, or noise at strength 0, which is the identity (``Dropout(p=0)``; timm's ViT
    at its defaults has 38) and shifts nothing."""
    if isinstance(module, NOISE_CLASSES):
        kind = type(module).__name__
    else:
        kind = NOISE_NAMES.get(type(module).__name__)
    return kind if kind is not None and not at_zero(noise_rate(module)) else None


def function_kind(function: object, rate: object) -> str | None:
    """What kind of noise a call of ``function`` at ``rate`` is (``NOISE_FUNCTIONS``), or None:
    not a noise function, or called at rate 0."""
    kind = NOISE_FUNCTIONS.get(function)  # type: ignore[call-overload]
    return kind if kind is not None and not at_zero(rate) else None


def at_zero(rate: object) -> bool:
    """A rate (strength) of 0: the noise is the identity. An unknown rate counts as noise."""
    return isinstance(rate, int | float) and rate == 0


def is_noise(module: nn.Module) -> bool:
    return noise_kind(module) is not None


def noise_rate(module: nn.Module) -> float | None:
    """A noise layer's rate, by whichever attribute its kind keeps it in."""
    for name in RATE_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


def is_bn(module: nn.Module) -> bool:
    """A BatchNorm layer of any dimension (SyncBatchNorm, lazy ones and subclasses such as
    timm's BatchNormAct2d too); not InstanceNorm, which shares torch's base class."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


# the normalisation layers that are not BN (torch's and their subclasses, timm's LayerNorm2d
# among them): they keep no running statistics, so noise before them shifts nothing at eval
OTHER_NORMS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def other_norms(model: nn.Module) -> dict[str, int]:
    """How many norm layers of each class other than BN ``model`` has, in first-seen order."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, OTHER_NORMS) and not is_bn(module):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BN layer with its name, in depth (registration) order."""
    return [(name, m) for name, m in model.named_modules() if is_bn(m)]


def noise_off(model: nn.Module) -> None:
    """Train mode for the BN layers only: every noise kind, a module's own functional dropout
    (``F.dropout(x, training=self.training)``) included, is off; BN uses batch statistics."""
    model.eval()
    for _, bn in bn_layers(model):
        bn.train()
