"""Schemes: the ordered ops that follow every conv and hidden linear layer.

A scheme is data, e.g. ``["bn", "act", "dropout"]`` for CONV → BN → ReLU → Dropout. It stays a
list of tokens until ``layers.build_ops`` turns it into modules, in exactly this order. A scheme
may also have ``head`` ops, applied once before the classifier (``drop_head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TOKENS: dict[str, str] = {
    "bn": "batch normalisation (BatchNorm2d after a conv, BatchNorm1d after a linear layer)",
    "act": "the model's activation (model.activation)",
    "dropout": "element-wise dropout with probability model.dropout",
    "dropout2d": "channel-wise dropout (whole feature maps) with probability model.dropout",
    "gaussian": "Gaussian dropout: multiplicative noise N(1, p/(1-p)) in training",
    "uout": "Uout (Li et al. 2019): x + x·r, r ~ U(-β, β) in training, β = model.uout_beta",
}


# The config keys a token reads, among those only tokens read. A scheme holding none of a key's
# tokens does not depend on that key: bn_only is the same run at every model.dropout.
TOKEN_KEYS: dict[str, str] = {
    "dropout": "model.dropout",
    "dropout2d": "model.dropout",
    "gaussian": "model.dropout",
    "uout": "model.uout_beta",
}


def unread_keys(scheme: Scheme) -> frozenset[str]:
    """The keys of ``TOKEN_KEYS`` that no token of this scheme reads: runs that differ only in
    them are one run."""
    tokens = (*scheme.ops, *scheme.head, *(scheme.inner or ()))
    read = {TOKEN_KEYS[t] for t in tokens if t in TOKEN_KEYS}
    return frozenset(TOKEN_KEYS.values()) - read


def parse_scheme(ops: Sequence[str]) -> tuple[str, ...]:
    """Validate a scheme's token list and return it as a tuple; raise ValueError if it is bad."""
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise ValueError(f"expected a list of tokens, got {ops!r}")
    seen: set[str] = set()
    for token in ops:
        if token not in TOKENS:
            raise ValueError(f"unknown token {token!r} (known: {', '.join(TOKENS)})")
        if token in seen:
            raise ValueError(f"token {token!r} appears twice in {list(ops)}")
        seen.add(token)
    return tuple(ops)


def describe(scheme: Scheme, layer: str = "CONV") -> str:
    """``Scheme(("bn", "act"))`` → ``"CONV → BN → ACT"``: the order as people write it."""
    text = " → ".join([layer, *(op.upper() for op in scheme.ops)])
    if scheme.inner is not None:
        inner = (op.upper() for op in scheme.inner)
        text += "; in a block: " + " → ".join(["CONV", *inner, "CONV"])
    if scheme.head:
        text += " … POOL → " + " → ".join(op.upper() for op in scheme.head) + " → FC"
    return text


@dataclass(frozen=True)
class Scheme:
    """A scheme, the one value every stage passes whole: its ops after each conv or linear
    layer, in order (the order is the experiment), the ops of the head, and the ops between
    the two convs of a block where they differ from ``ops``."""

    ops: tuple[str, ...]
    head: tuple[str, ...] = ()
    source: str = ""
    # between the two convs of a residual block or DenseNet layer, in place of ``ops`` there
    inner: tuple[str, ...] | None = None


# The orderings the literature and practice propose, usable by name in a config.
CATALOGUE: dict[str, Scheme] = {
    "bn_relu_drop": Scheme(
        ("bn", "act", "dropout"),
        source="Ioffe & Szegedy 2015 (BN before the nonlinearity) with dropout after the "
        "activation (Srivastava et al. 2014): the common default",
    ),
    "relu_drop_bn": Scheme(
        ("act", "dropout", "bn"),
        source="BN last, so that it normalises what the next layer receives",
    ),
    "bn_only": Scheme(("bn", "act"), source="BN and no dropout (ResNet, DenseNet)"),
    "plain": Scheme(("act",), source="neither BN nor dropout: the baseline"),
    "drop_only": Scheme(("act", "dropout"), source="dropout and no BN (Srivastava et al. 2014)"),
    "relu_bn": Scheme(("act", "bn"), source="BN after the activation"),
    "relu_bn_drop": Scheme(("act", "bn", "dropout"), source="BN after activation, dropout last"),
    "bn_drop_relu": Scheme(("bn", "dropout", "act"), source="dropout between BN and activation"),
    "drop_bn_relu": Scheme(
        ("dropout", "bn", "act"),
        source="dropout right before BN: the variance shift at its plainest (Li et al. 2019)",
    ),
    "drop_head": Scheme(
        ("bn", "act"),
        head=("dropout",),
        source="BN → activation everywhere, one dropout after the last BN, before the "
        "classifier (Li et al., CVPR 2019)",
    ),
    "wrn_dropout": Scheme(
        ("bn", "act"),
        inner=("bn", "act", "dropout"),
        source="Wide ResNet's dropout between the two convs of each block, after the second "
        "ReLU, and nowhere else (Zagoruyko & Komodakis 2016): wrn, resnet and densenet only",
    ),
    "bn_relu_uout": Scheme(
        ("bn", "act", "uout"),
        source="variance-stable Uout noise in place of dropout (Li et al., CVPR 2019)",
    ),
}
