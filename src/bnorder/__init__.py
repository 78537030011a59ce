"""bnorder: which order of BatchNorm, activation and Dropout works best? Measured on CIFAR-10,
CIFAR-100, SVHN or your own images, and on your own network:
``from bnorder import audit, variance_shift, recalibrate_bn``."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "audit", "recalibrate_bn", "variance_shift"]  # docs/variance-shift.md

# the library API, imported on first use: ``import bnorder`` alone stays light
_API = {"audit": "audit", "variance_shift": "layer_shifts", "recalibrate_bn": "recalibrated"}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module("bnorder.shift.audit"), _API[name])
    raise AttributeError(f"module 'bnorder' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
