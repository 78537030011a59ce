"""Layer registries and the one function that turns a scheme into modules.

One small registry per kind of layer (after timm's ``create_act``): lowercase name → class,
``None`` → ``nn.Identity``. Unlike timm's fused norm-act layers, the order is not fixed in a
class: ``build_ops`` emits the modules in the scheme's order, because the order is the experiment.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

# Keyed by the dimensionality of the layer they follow: 1 after nn.Linear, 2 after nn.Conv2d.
NORMS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


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
) -> list[nn.Module]:
    """The modules that follow one conv (``dims=2``) or linear layer (``dims=1``), in order."""
    act_layer = get_act(act)
    makers = {
        "bn": lambda: NORMS[dims](channels),
        "act": act_layer,
        "dropout": lambda: nn.Dropout(dropout),
    }
    return [makers[token]() for token in scheme]


def has_bias(scheme: Sequence[str]) -> bool:
    """A layer directly followed by BN needs no bias: BN's shift would cancel it."""
    return not scheme or scheme[0] != "bn"
