import itertools

import pytest
import torch
from torch import nn

from bnorder.config import ModelConfig
from bnorder.layers import build_ops, get_act
from bnorder.models import VGG, build_model, count_parameters

TOKENS = ["bn", "act", "dropout"]
EVERY_SCHEME = [
    list(order) for r in range(len(TOKENS) + 1) for order in itertools.permutations(TOKENS, r)
]
KIND = {"bn": (nn.BatchNorm2d, nn.BatchNorm1d), "act": (nn.ReLU,), "dropout": (nn.Dropout,)}


def blocks(model: nn.Module) -> list[nn.Sequential]:
    """Every conv/linear block: a Sequential whose first child is the conv or linear layer."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Sequential) and len(m) and isinstance(m[0], nn.Conv2d | nn.Linear)
    ]


@pytest.mark.parametrize("scheme", EVERY_SCHEME, ids=lambda s: "-".join(s) or "none")
def test_every_block_applies_the_scheme_in_order(scheme: list[str]) -> None:
    config = ModelConfig(widths=[4, 8, 8], convs_per_stage=2, hidden=[16], dropout=0.25)
    model = build_model(config, scheme)
    found = blocks(model)
    assert len(found) == 3 * 2 + 1  # six convs and one hidden linear layer
    for block in found:
        names = [name for name, _ in block.named_children()]
        assert names[1:] == scheme
        for module, token in zip(list(block)[1:], scheme, strict=True):
            assert isinstance(module, KIND[token])
        layer = block[0]
        assert (layer.bias is None) == (scheme[:1] == ["bn"])  # bias only where BN doesn't follow
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert all(d.p == 0.25 for d in dropouts)
    assert len(dropouts) == (7 if "dropout" in scheme else 0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_batchnorm_matches_the_layer_it_follows() -> None:
    model = build_model(ModelConfig(widths=[4], convs_per_stage=1, hidden=[6]), ["bn", "act"])
    conv_block, fc_block = blocks(model)
    assert isinstance(conv_block.bn, nn.BatchNorm2d) and conv_block.bn.num_features == 4
    assert isinstance(fc_block.bn, nn.BatchNorm1d) and fc_block.bn.num_features == 6


def test_stages_are_separated_by_max_pool() -> None:
    model = VGG(["bn", "act"], widths=[4, 8, 16], convs_per_stage=1)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2


def test_same_seed_same_weights_under_every_scheme() -> None:
    config = ModelConfig(widths=[4, 8], convs_per_stage=2, hidden=[8])
    a = build_model(config, ["bn", "act", "dropout"], seed=3)
    b = build_model(config, ["act", "dropout", "bn"], seed=3)  # convs here have a bias
    c = build_model(config, ["bn", "act"], seed=4)
    weights = lambda m: [p.weight for p in m.modules() if isinstance(p, nn.Conv2d | nn.Linear)]
    for wa, wb in zip(weights(a), weights(b), strict=True):
        assert torch.equal(wa, wb)
    assert not torch.equal(weights(a)[0], weights(c)[0])


def test_activation_registry() -> None:
    assert get_act("GELU") is nn.GELU
    assert get_act(None) is nn.Identity
    assert get_act(nn.Tanh) is nn.Tanh
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        get_act("swish")
    ops = build_ops(["act"], 4, dims=2, act="silu", dropout=0.0)
    assert isinstance(ops[0], nn.SiLU)


def test_parameter_count() -> None:
    model = VGG([], widths=[4], convs_per_stage=1)
    assert count_parameters(model) == (3 * 4 * 9 + 4) + (4 * 10 + 10)
