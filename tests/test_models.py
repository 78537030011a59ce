import itertools

import pytest
import torch
from torch import nn

from bnorder.nets.layers import build_ops, get_act
from bnorder.nets.models import VGG, build_model, count_parameters
from bnorder.nets.schemes import CATALOGUE, Scheme
from bnorder.runs.config import ModelConfig

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
    model = build_model(config, Scheme(tuple(scheme)))
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
    model = build_model(
        ModelConfig(widths=[4], convs_per_stage=1, hidden=[6]), Scheme(("bn", "act"))
    )
    conv_block, fc_block = blocks(model)
    assert isinstance(conv_block.bn, nn.BatchNorm2d) and conv_block.bn.num_features == 4
    assert isinstance(fc_block.bn, nn.BatchNorm1d) and fc_block.bn.num_features == 6


def test_stages_are_separated_by_max_pool() -> None:
    model = VGG(["bn", "act"], widths=[4, 8, 16], convs_per_stage=1)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2


def test_same_seed_same_weights_under_every_scheme() -> None:
    config = ModelConfig(widths=[4, 8], convs_per_stage=2, hidden=[8])
    a = build_model(config, Scheme(("bn", "act", "dropout")), seed=3)
    b = build_model(config, Scheme(("act", "dropout", "bn")), seed=3)  # convs here have a bias
    c = build_model(config, Scheme(("bn", "act")), seed=4)
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


@pytest.mark.parametrize("scheme", EVERY_SCHEME, ids=lambda s: "-".join(s) or "none")
def test_resnet_branches_apply_the_scheme_before_each_conv(scheme: list[str]) -> None:
    from bnorder.nets.models import PreActBlock

    config = ModelConfig(arch="resnet", widths=[4, 8], blocks_per_stage=2, dropout=0.25)
    model = build_model(config, Scheme(tuple(scheme), ("dropout",)))
    residual = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(residual) == 4
    for block in residual:
        assert [name for name, _ in block.pre.named_children()] == scheme
        names = [name for name, _ in block.branch.named_children()]
        assert names == ["conv1"] + [f"{t}2" for t in scheme] + ["conv2"]
        assert (block.branch.conv1.bias is None) == (scheme[:1] == ["bn"])
    assert [name for name, _ in model.final.named_children()] == scheme
    assert isinstance(model.head.dropout, nn.Dropout)
    assert isinstance(residual[2].shortcut, nn.Conv2d)  # the stage change: 4 → 8, stride 2
    assert residual[1].shortcut is None  # identity within a stage
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_size_and_same_init_across_schemes() -> None:
    config = ModelConfig(arch="resnet", widths=[64, 128, 256, 512], blocks_per_stage=2)
    assert (
        count_parameters(build_model(config, Scheme(("bn", "act")))) == 11_172_170
    )  # PreResNet-18
    small = ModelConfig(arch="resnet", widths=[4, 8], blocks_per_stage=1)
    a = build_model(small, Scheme(("bn", "act", "dropout")), seed=1)
    b = build_model(small, Scheme(("act", "bn")), seed=1)
    convs = lambda m: [c.weight for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(torch.equal(x, y) for x, y in zip(convs(a), convs(b), strict=True))


@pytest.mark.parametrize("token", ["dropout", "dropout2d", "gaussian", "uout"])
def test_noise_layers_in_train_and_eval(token: str) -> None:
    """Identity in eval; in training, on large random inputs, the mean is kept and the
    variance grows as each noise promises: Var(x·m) = Var(x) + v·E[x²] for noise m with mean 1
    and variance v."""
    torch.manual_seed(0)
    p, beta = 0.3, 0.2
    (layer,) = build_ops([token], 64, dims=2, act="relu", dropout=p, uout_beta=beta)
    x = torch.randn(256, 64, 16, 16).abs() + 0.5  # random, and never exactly 0
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    v = {"uout": beta**2 / 3}.get(token, p / (1 - p))
    assert y.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    expected = x.var().item() + v * (x**2).mean().item()
    assert y.var().item() == pytest.approx(expected, rel=0.05)
    if token == "dropout2d":  # whole channels dropped
        per_channel = y.reshape(256, 64, -1)
        assert ((per_channel == 0).all(-1) | (per_channel != 0).all(-1)).all()


@pytest.mark.parametrize("name", [n for n, s in CATALOGUE.items() if s.inner is None])
def test_every_catalogue_scheme_builds_in_its_order(name: str) -> None:
    from bnorder.runs.config import build_config

    config = build_config({"model": {"widths": [4, 8], "convs_per_stage": 1}, "schemes": [name]})
    spec = config.schemes[name]
    model = build_model(config.model, spec.scheme())
    for block in blocks(model):
        assert [n for n, _ in block.named_children()][1:] == spec.ops
    assert [n for n, _ in model.head.named_children()] == spec.head
    if name == "drop_head":  # the only dropout sits after the last BN, before the classifier
        assert spec.ops == ["bn", "act"] and spec.head == ["dropout"]
        assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1
