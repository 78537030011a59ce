"""Every noise kind the one definition (shift/kinds.py) names: the audit finds it upstream of
BN, it shifts BN's variance, and BN re-calibration, in either mode, takes the shift back to 1.

The examples below are keyed by the definition's own entries: a kind added there without an
example here fails ``test_every_kind_has_an_example``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnorder import audit, recalibrate_bn, variance_shift
from bnorder.nets.layers import TrainingNoise
from bnorder.shift.kinds import NOISE_CLASSES, NOISE_FUNCTIONS, NOISE_NAMES, noise_kind

RATE = 0.5


class Functional(nn.Module):
    """A module whose forward calls a noise function, as timm's heads do."""

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, RATE, training=self.training)


def _stochastic_depth() -> nn.Module:
    from torchvision.ops import StochasticDepth

    return StochasticDepth(RATE, mode="row")


def _drop_path() -> nn.Module:
    from timm.layers import DropPath

    return DropPath(RATE)


# kind → (the noise module, the dimensions of data it works on: 0 for flat features)
EXAMPLES: dict[object, tuple[Callable[[], nn.Module], int]] = {
    nn.Dropout: (lambda: nn.Dropout(RATE), 0),
    nn.Dropout1d: (lambda: nn.Dropout1d(RATE), 1),
    nn.Dropout2d: (lambda: nn.Dropout2d(RATE), 2),
    nn.Dropout3d: (lambda: nn.Dropout3d(RATE), 3),
    nn.AlphaDropout: (lambda: nn.AlphaDropout(RATE), 0),
    nn.FeatureAlphaDropout: (lambda: nn.FeatureAlphaDropout(RATE), 2),
    "GaussianDropout": (lambda: _concrete_noise("GaussianDropout")(RATE), 0),
    "Uout": (lambda: _concrete_noise("Uout")(0.9), 0),
    "StochasticDepth": (_stochastic_depth, 0),
    "DropPath": (_drop_path, 0),
    F.dropout: (lambda: Functional(F.dropout), 0),
    F.dropout2d: (lambda: Functional(F.dropout2d), 2),
    F.alpha_dropout: (lambda: Functional(F.alpha_dropout), 0),
}


def _concrete_noise(name: str) -> type[nn.Module]:
    return {c.__name__: c for c in TrainingNoise.__subclasses__()}[name]


def defined_kinds() -> list[object]:
    """Every kind the definition names: the concrete classes below its base classes, its
    names and its functions."""
    classes = [c for base in NOISE_CLASSES for c in base.__subclasses__()]
    concrete = [c for c in classes if c in EXAMPLES] + [
        c.__name__ for c in classes if c.__name__ in EXAMPLES
    ]
    unknown = [c for c in classes if c not in EXAMPLES and c.__name__ not in EXAMPLES]
    return [*concrete, *unknown, *NOISE_NAMES, *NOISE_FUNCTIONS]


def test_every_kind_has_an_example() -> None:
    missing = [kind for kind in defined_kinds() if kind not in EXAMPLES]
    assert missing == []


def network(kind: object) -> tuple[nn.Module, torch.Tensor]:
    """layer → noise → BN of the kind's dimension, and fixed inputs for it."""
    make, dims = EXAMPLES[kind]
    channels = 8
    layer = {
        0: nn.Linear(16, channels),
        1: nn.Conv1d(3, channels, 3, padding=1),
        2: nn.Conv2d(3, channels, 3, padding=1),
        3: nn.Conv3d(3, channels, 3, padding=1),
    }[dims]
    bn = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    shape = {0: (16,), 1: (3, 12), 2: (3, 8, 8), 3: (3, 4, 4, 4)}[dims]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(512, *shape, generator=generator)
    return nn.Sequential(layer, make(), bn(channels)), inputs


def trained(kind: object) -> tuple[nn.Module, list[torch.Tensor]]:
    """The network after forward passes in train mode: BN's running variance has the noise."""
    torch.manual_seed(0)
    model, inputs = network(kind)
    batches = list(inputs.split(64))
    model.train()
    with torch.no_grad():
        for _ in range(20):
            for batch in batches:
                model(batch)
    return model, batches


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=str)
@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_recalibration_takes_the_shift_to_one_behind_every_kind(kind: object, mode: str) -> None:
    model, batches = trained(kind)
    (before,) = variance_shift(model, batches)
    assert before["shift"] > 1.05, f"{kind} did not shift BN's variance: test it otherwise"
    recalibrate_bn(model, batches, mode=mode)
    (after,) = variance_shift(model, batches)
    assert after["shift"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=str)
def test_the_audit_finds_every_kind_upstream_of_bn(kind: object) -> None:
    model, batches = trained(kind)
    found = audit(model, example=batches[0])
    (layer,) = found.layers
    assert len(layer.fed_by) == 1, f"{kind}: {layer.fed_by}"
    if not isinstance(model[1], Functional):
        assert noise_kind(model[1]) == layer.fed_by[0].kind


class FunctionalAt(nn.Module):
    """A module calling a noise function at a rate of its own (0: the identity)."""

    def __init__(self, function: Callable[..., torch.Tensor], p: float) -> None:
        super().__init__()
        self.function, self.p = function, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, self.p, training=self.training)


def _at_zero() -> list[tuple[nn.Module, int]]:
    """Every kind at strength 0, where it is the identity, with its data's dimensions."""
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    made = [
        (nn.Dropout(0.0), 0),
        (nn.Dropout2d(0), 2),
        (nn.AlphaDropout(0.0), 0),
        (_concrete_noise("GaussianDropout")(0.0), 0),
        (_concrete_noise("Uout")(0.0), 0),
        (StochasticDepth(0.0, mode="row"), 0),
        (DropPath(0.0), 0),
    ]
    return made + [(FunctionalAt(f, 0.0), 2 if f is F.dropout2d else 0) for f in NOISE_FUNCTIONS]


@pytest.mark.parametrize("index", range(10))
def test_a_noise_layer_at_strength_zero_is_not_noise(index: int) -> None:
    """Dropout(p=0) and its kin are the identity: no BN is fed by them, nothing to advise
    (timm's ViT at its defaults has 38 of them)."""
    noise, dims = _at_zero()[index]
    layer = nn.Linear(16, 8) if dims == 0 else nn.Conv2d(3, 8, 3, padding=1)
    bn = nn.BatchNorm1d(8) if dims == 0 else nn.BatchNorm2d(8)
    model = nn.Sequential(layer, noise, bn)
    if not isinstance(noise, FunctionalAt):
        assert noise_kind(noise) is None
    found = audit(model, example=torch.randn(4, *((16,) if dims == 0 else (3, 8, 8))))
    assert [layer.fed_by for layer in found.layers] == [[]] and found.noise_after_last_bn == []
    assert found.summary() == "the one BN layer is not fed by noise"
