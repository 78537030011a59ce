"""Layer registries and the one function that turns a scheme into modules.

One small registry per kind of layer (after timm's ``create_act``): lowercase name → class,
``None`` → ``nn.Identity``. Unlike timm's fused norm-act layers, the order is not fixed in a
class: ``build_ops`` emits the modules in the scheme's order, because the order is the experiment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

# Keyed by the dimensionality of the layer they follow: 1 after nn.Linear, 2 after nn.Conv2d.
NORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


class TrainingNoise(nn.Module):
    """Noise in training only: the identity in eval and at strength 0. The noise is drawn in
    fp32 even under bf16 autocast, whose 8-bit mantissa would coarsen it."""

    strength_name = "strength"  # as extra_repr names it: the paper's symbol

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.strength == 0:
            return x
        return self.noisy(x).to(x.dtype)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.strength_name}={self.strength}"


class GaussianDropout(TrainingNoise):
    """Multiplicative noise N(1, p/(1-p)) in training, identity in eval: the same mean and
    variance as inverted dropout of rate p, without zeros (Srivastava et al. 2014, §10)."""

    strength_name = "p"

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        p = self.strength
        return x * (1 + torch.randn_like(x, dtype=torch.float32) * (p / (1 - p)) ** 0.5)


class Uout(TrainingNoise):
    """x + x·r with r ~ U(-β, β) in training, identity in eval (Li et al., CVPR 2019): noise
    whose variance does not depend on the scale BN later learns."""

    strength_name = "beta"

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * ((torch.rand_like(x, dtype=torch.float32) * 2 - 1) * self.strength)


def get_act(act: str | type[nn.Module] | None) -> type[nn.Module]:
    """An activation class from a registry name, a class, or ``None`` (identity)."""
    if act is None:
        return nn.Identity
    if isinstance(act, str):
        try:
            return ACTIVATIONS[act.lower()]
        except KeyError:
            known = ", ".join(ACTIVATIONS)
            raise ValueError(f"unknown activation {act!r} (known: {known})") from None
    return act


def build_ops(
    scheme: Sequence[str],
    channels: int,
    *,
    dims: int,
    act: str | type[nn.Module] | None,
    dropout: float,
    uout_beta: float = 0.1,
) -> list[nn.Module]:
    """The modules that follow one conv (``dims=2``) or linear layer (``dims=1``), in order."""
    act_layer = get_act(act)
    makers = {
        "bn": lambda: NORMS[dims](channels),
        "act": act_layer,
        "dropout": lambda: nn.Dropout(dropout),
        # after a linear layer each feature is its own channel: plain dropout is channel-wise
        "dropout2d": lambda: nn.Dropout2d(dropout) if dims == 2 else nn.Dropout(dropout),
        "gaussian": lambda: GaussianDropout(dropout),
        "uout": lambda: Uout(uout_beta),
    }
    return [makers[token]() for token in scheme]


def has_bias(scheme: Sequence[str]) -> bool:
    """A layer directly followed by BN needs no bias: BN's shift would cancel it."""
    return not scheme or scheme[0] != "bn"
