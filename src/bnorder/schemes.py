"""Schemes: the ordered ops that follow every conv and hidden linear layer.

A scheme is data, e.g. ``["bn", "act", "dropout"]`` for CONV → BN → ReLU → Dropout. It stays a
list of tokens until ``layers.build_ops`` turns it into modules, in exactly this order.
"""

from __future__ import annotations

from collections.abc import Sequence

TOKENS: dict[str, str] = {
    "bn": "batch normalisation (BatchNorm2d after a conv, BatchNorm1d after a linear layer)",
    "act": "the model's activation (model.activation)",
    "dropout": "element-wise dropout with probability model.dropout",
}


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


def describe(ops: Sequence[str], layer: str = "CONV") -> str:
    """``["bn", "act"]`` → ``"CONV → BN → ACT"``: the order as people write it."""
    return " → ".join([layer, *(op.upper() for op in ops)])
