"""Wide ResNet and DenseNet-BC: the scheme's ops wherever their design puts BN and the
activation, in the scheme's order; forward and backward; the presets' parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import invoke
from torch import nn

from bnorder.nets.models import DenseLayer, DenseNet, PreActBlock, WideResNet, build_model
from bnorder.nets.schemes import CATALOGUE, Scheme
from bnorder.runs.config import ConfigError, ModelConfig, build_config, select_schemes

SMALL = {
    "wrn": ModelConfig(arch="wrn", depth=10, widen_factor=1),
    "densenet": ModelConfig(arch="densenet", depth=10, growth_rate=4),
}
SCHEMES = ["bn_relu_drop", "relu_drop_bn", "drop_bn_relu", "wrn_dropout"]


def _names(sequence: nn.Module) -> list[str]:
    return [name for name, _ in sequence.named_children()]


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("name", SCHEMES)
def test_the_scheme_goes_before_every_conv_in_its_order(arch: str, name: str) -> None:
    scheme = CATALOGUE[name]
    inner = list(scheme.inner or scheme.ops)
    model = build_model(SMALL[arch], scheme, num_classes=5)
    units = [m for m in model.modules() if isinstance(m, PreActBlock | DenseLayer)]
    assert units, "no blocks"
    for unit in units:
        assert _names(unit.pre) == list(scheme.ops)
        assert _names(unit.branch) == ["conv1", *(t + "2" for t in inner), "conv2"]
    assert _names(model.final) == list(scheme.ops)  # the last BN-ReLU before pooling
    if arch == "densenet":
        for transition in (model.features.transition1, model.features.transition2):
            assert _names(transition) == [*scheme.ops, "conv", "pool"]
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()  # trains as built
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", list(SMALL))
def test_wrn_dropout_drops_between_the_two_convs_only(arch: str) -> None:
    scheme = CATALOGUE["wrn_dropout"]
    model = build_model(SMALL[arch], scheme)
    dropouts = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    units = [m for m in model.modules() if isinstance(m, PreActBlock | DenseLayer)]
    assert len(dropouts) == len(units)
    assert all(name.endswith("branch.dropout2") for name in dropouts)
    for unit in units:  # after the second ReLU, right before the second conv (their code)
        assert _names(unit.branch)[-2:] == ["dropout2", "conv2"]


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 48, 48)])
def test_forward_and_backward_on_any_image_shape(arch: str, shape: tuple[int, ...]) -> None:
    scheme = CATALOGUE["bn_relu_drop"]
    model = build_model(SMALL[arch], scheme, num_classes=7, in_channels=shape[0], seed=1)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 7)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_presets_parameter_counts_match_the_papers() -> None:
    """WRN-28-10 is 36.5 M (Zagoruyko & Komodakis, Table 4: 36.5 M); WRN-16-4 2.7 M; and
    DenseNet-BC-100-12 0.8 M (Huang et al., Table 2). Ours, without conv biases before BN."""
    bn_relu = Scheme(("bn", "act"))
    counts = {
        preset: _count(build_model(build_config({"model": {"preset": preset}}).model, bn_relu))
        for preset in ("wrn-16-4", "wrn-28-10", "densenet-bc-100-12")
    }
    assert counts == {
        "wrn-16-4": 2_748_890,
        "wrn-28-10": 36_479_194,
        "densenet-bc-100-12": 769_162,
    }


def test_presets_set_their_keys_and_keys_given_win() -> None:
    model = build_config({"model": {"preset": "wrn-28-10"}}).model
    assert (model.arch, model.depth, model.widen_factor) == ("wrn", 28, 10)
    assert (
        build_config({"model": {"preset": "wrn-28-10", "widen_factor": 2}}).model.widen_factor == 2
    )
    named = build_model(model.model_copy(update={"widen_factor": 1}), Scheme(("bn", "act")))
    assert isinstance(named, WideResNet) and named.name == "WRN-28-1"
    with pytest.raises(ConfigError, match="arch: vgg, where preset wrn-16-4 is a wrn"):
        build_config({"model": {"preset": "wrn-16-4", "arch": "vgg"}})
    with pytest.raises(ConfigError, match="model.depth: 12 is not 6n \\+ 4"):
        build_config({"model": {"arch": "densenet", "depth": 12}})
    assert isinstance(
        build_model(ModelConfig(arch="densenet", depth=10), Scheme(("bn",))), DenseNet
    )


def test_inner_ops_on_a_vgg_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="schemes.wrn_dropout: inner ops go between"):
        build_config({"schemes": ["bn_only", "wrn_dropout"]})
    config = build_config({"schemes": ["bn_only"]})
    with pytest.raises(ConfigError, match="--schemes: schemes.wrn_dropout"):
        select_schemes(config, ["wrn_dropout"])
    wrn = build_config({"model": {"arch": "wrn"}, "schemes": ["wrn_dropout", "bn_only"]})
    assert wrn.schemes["wrn_dropout"].inner == ["bn", "act", "dropout"]


def test_bnorder_model_prints_the_network_and_its_count(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {dataset: cifar100, root: nowhere}\n"
        "model: {preset: densenet-bc-100-12}\nschemes: [wrn_dropout]\n"
    )
    result = invoke("model", config)
    assert result.exit_code == 0, result.output
    assert "in a block: CONV → BN → ACT → DROPOUT → CONV" in result.output
    # 769,162 less 10 classes' weights plus 100's
    assert "DenseNet-BC-100-12, 100 classes, 3×32×32 images: 800,032 parameters" in result.output
