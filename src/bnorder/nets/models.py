"""The CNNs under test: a VGG-style net (the default), a pre-activation ResNet, Wide ResNet and
DenseNet-BC; their weight init; and ``build_model``, which binds a config's layer options once.

The scheme decides what follows every conv and hidden linear layer (in the ResNets and
DenseNet: what precedes every conv). Every place a scheme's ops go is an ``ops_sequence``
call, so an architecture declares those places and nothing else about the ops. The classes take
a ``make_ops`` callable rather than the options themselves (torchvision injects ``norm_layer``
the same way), and every named sequence comes from ``named``: its names are the
``state_dict`` keys that checkpoints hold. ``ARCHITECTURES`` maps ``model.arch`` to the
class; a new family is one class with a ``from_config``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn

from bnorder.nets.layers import build_ops, has_bias
from bnorder.nets.options import ModelConfig
from bnorder.nets.schemes import Scheme


class MakeOps(Protocol):
    """``build_ops`` with its layer options bound: the modules a scheme puts after one layer."""

    def __call__(self, scheme: Sequence[str], channels: int, *, dims: int) -> list[nn.Module]: ...


# ModelConfig's defaults, for the classes used on their own
DEFAULT_OPS: MakeOps = partial(build_ops, act="relu", dropout=0.3, uout_beta=0.1)

NamedModules = Iterable[tuple[str, nn.Module]]


def named(modules: NamedModules) -> nn.Sequential:
    """A Sequential whose children carry these names, so the printed tree reads as the order."""
    return nn.Sequential(OrderedDict(modules))


def ops_sequence(
    scheme: Sequence[str],
    channels: int,
    make_ops: MakeOps,
    *,
    dims: int,
    first: NamedModules = (),
    last: NamedModules = (),
    suffix: str = "",
) -> nn.Sequential:
    """The scheme's ops, each named by its token and ``suffix``, between ``first`` and ``last``."""
    ops = make_ops(scheme, channels, dims=dims)
    return named([*first, *zip((t + suffix for t in scheme), ops, strict=True), *last])


def block(
    layer: nn.Module, scheme: Sequence[str], channels: int, make_ops: MakeOps = DEFAULT_OPS
) -> nn.Sequential:
    """``layer`` (named ``conv`` or ``fc``) then the scheme's ops, named by token."""
    dims = 2 if isinstance(layer, nn.Conv2d) else 1
    name = "conv" if dims == 2 else "fc"
    return ops_sequence(scheme, channels, make_ops, dims=dims, first=[(name, layer)])


class VGG(nn.Module):
    """VGG-style: stages of 3×3 conv blocks, max-pool between stages, global average pool,
    optional hidden linear blocks, the scheme's ``head`` ops, then a linear classifier."""

    size_keys = ("widths", "convs_per_stage", "hidden")

    def __init__(
        self,
        scheme: Sequence[str],
        widths: Sequence[int] = (64, 128, 256),
        convs_per_stage: int = 2,
        hidden: Sequence[int] = (),
        num_classes: int = 10,
        in_channels: int = 3,
        head: Sequence[str] = (),
        make_ops: MakeOps = DEFAULT_OPS,
    ) -> None:
        super().__init__()
        self.scheme = tuple(scheme)
        self.features = self._stages(widths, convs_per_stage, in_channels, make_ops)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        bias = has_bias(self.scheme)
        hidden_blocks = []
        channels = widths[-1] if widths else in_channels  # what the features put out
        for width in hidden:
            layer = nn.Linear(channels, width, bias=bias)
            hidden_blocks.append(block(layer, self.scheme, width, make_ops))
            channels = width
        self.hidden = nn.Sequential(*hidden_blocks)
        self.head = ops_sequence(head, channels, make_ops, dims=1)
        self.classifier = nn.Linear(channels, num_classes)

    def _stages(
        self, widths: Sequence[int], convs_per_stage: int, channels: int, make_ops: MakeOps
    ) -> nn.Sequential:
        """``stage1``, ``pool1``, ``stage2``, …: the conv blocks, a max-pool between stages."""
        bias = has_bias(self.scheme)
        stages: list[tuple[str, nn.Module]] = []
        for s, width in enumerate(widths):
            if s > 0:
                stages.append((f"pool{s}", nn.MaxPool2d(2)))
            convs = []
            for _ in range(convs_per_stage):
                conv = nn.Conv2d(channels, width, 3, padding=1, bias=bias)
                convs.append(block(conv, self.scheme, width, make_ops))
                channels = width
            stages.append((f"stage{s + 1}", nn.Sequential(*convs)))
        return named(stages)

    @classmethod
    def from_config(
        cls, config: ModelConfig, scheme: Sequence[str], inner: Sequence[str] | None, **kw: Any
    ) -> VGG:
        if inner is not None:  # validate says so first, by the scheme's name
            raise ValueError("a VGG has no block with two convs for inner ops to go between")
        return cls(scheme, config.widths, config.convs_per_stage, config.hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.hidden(self.pool(self.features(x)))))


class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016, "Identity Mappings"): the scheme's ops
    come before each of the branch's two 3×3 convs, x + branch(x). With ``[bn, act]`` this is
    PreResNet's BN → ReLU → conv. ``inner``, where given, takes the place of the scheme's ops
    between the two convs: WRN's dropout, there and nowhere else, is ``inner = [bn, act,
    dropout]``. Where the shape changes, a 1×1 conv shortcut takes the pre-activated input, as in
    He et al.'s pre-activation ResNet."""

    def __init__(
        self,
        scheme: Sequence[str],
        in_channels: int,
        channels: int,
        stride: int,
        make_ops: MakeOps = DEFAULT_OPS,
        inner: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        inner = scheme if inner is None else inner
        conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=has_bias(inner))
        # conv2 is followed by the next block's ops (or the final ones): the scheme's
        conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=has_bias(scheme))
        self.pre = ops_sequence(scheme, in_channels, make_ops, dims=2)
        # suffixed "2": the ops before conv2, kept apart from those in ``pre`` by name
        self.branch = ops_sequence(
            inner,
            channels,
            make_ops,
            dims=2,
            first=[("conv1", conv1)],
            last=[("conv2", conv2)],
            suffix="2",
        )
        self.shortcut: nn.Module | None = None  # identity
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(
                in_channels, channels, 1, stride=stride, bias=has_bias(scheme)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pre(x)
        return (x if self.shortcut is None else self.shortcut(out)) + self.branch(out)


class PreActivationNet(nn.Module):
    """What the pre-activation nets share after their stem and features: the scheme's ops
    once more after the last block (their final BN-ReLU), global pooling, the scheme's
    ``head`` ops and the classifier."""

    def _finish(
        self,
        scheme: Sequence[str],
        channels: int,
        head: Sequence[str],
        num_classes: int,
        make_ops: MakeOps,
    ) -> None:
        self.final = ops_sequence(scheme, channels, make_ops, dims=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = ops_sequence(head, channels, make_ops, dims=1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.features(self.stem(x)))
        return self.classifier(self.head(self.pool(x)))


class PreResNet(PreActivationNet):
    """Pre-activation ResNet: a 3×3 stem conv, stages of residual blocks (stride 2 between
    stages), the scheme's ops once more after the last block (PreResNet's final BN-ReLU),
    global average pool, the scheme's ``head`` ops, a linear classifier. Widths (64, 128, 256,
    512) with 2 blocks each is PreResNet-18."""

    size_keys: tuple[str, ...] = ("widths", "blocks_per_stage")

    def __init__(
        self,
        scheme: Sequence[str],
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: int = 2,
        num_classes: int = 10,
        head: Sequence[str] = (),
        in_channels: int = 3,
        make_ops: MakeOps = DEFAULT_OPS,
        inner: Sequence[str] | None = None,
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        self.scheme = tuple(scheme)
        channels = stem_width or widths[0]
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=has_bias(scheme))
        stages = []
        for s, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(PreActBlock(scheme, channels, width, stride, make_ops, inner))
                channels = width
            stages.append((f"stage{s + 1}", nn.Sequential(*blocks)))
        self.features = named(stages)
        self._finish(scheme, channels, head, num_classes, make_ops)

    @classmethod
    def from_config(cls, config: ModelConfig, scheme: Sequence[str], **kw: Any) -> PreResNet:
        return cls(scheme, widths=config.widths, blocks_per_stage=config.blocks_per_stage, **kw)


def units_per_stage(depth: int) -> int:
    """A WRN's blocks, or a DenseNet-BC's layers, in each of its 3 stages: depth counts 2
    convs per unit, 6 per stage, plus the stem, two transitions (or shortcuts) and the
    classifier: 6n + 4."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a depth of 6n + 4 (10, 16, 22, 28, 40, 100, …), not {depth}")
    return (depth - 4) // 6


class WideResNet(PreResNet):
    """Wide ResNet-d-k (Zagoruyko & Komodakis 2016): a 16-channel stem, three stages of
    (d − 4)/6 pre-activation blocks of widths 16k, 32k, 64k. WRN-28-10 is their CIFAR net;
    their dropout between the two convs of each block is the scheme ``wrn_dropout``."""

    size_keys = ("depth", "widen_factor")

    def __init__(
        self, scheme: Sequence[str], depth: int = 16, widen_factor: int = 4, **kw: Any
    ) -> None:
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        super().__init__(scheme, widths, units_per_stage(depth), stem_width=16, **kw)
        self.name = f"WRN-{depth}-{widen_factor}"

    @classmethod
    def from_config(cls, config: ModelConfig, scheme: Sequence[str], **kw: Any) -> WideResNet:
        return cls(scheme, config.depth or 16, config.widen_factor, **kw)


class DenseLayer(nn.Module):
    """DenseNet-BC's bottleneck layer: the scheme's ops, a 1×1 conv to 4·growth channels, the
    ``inner`` ops (the scheme's, where not given), a 3×3 conv to ``growth`` new feature maps,
    concatenated to its input. Every later layer's first ops see these maps: dropout in the
    scheme therefore sits before the BN of every layer downstream (Li et al.'s placement);
    Huang et al.'s dropout after each conv is the scheme ``[dropout, bn, act]``."""

    def __init__(
        self,
        scheme: Sequence[str],
        in_channels: int,
        growth: int,
        make_ops: MakeOps,
        inner: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        inner = scheme if inner is None else inner
        bottleneck = 4 * growth
        self.pre = ops_sequence(scheme, in_channels, make_ops, dims=2)
        conv1 = nn.Conv2d(in_channels, bottleneck, 1, bias=has_bias(inner))
        conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=has_bias(scheme))
        self.branch = ops_sequence(
            inner, bottleneck, make_ops, dims=2,
            first=[("conv1", conv1)], last=[("conv2", conv2)], suffix="2",
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.branch(self.pre(x))], dim=1)


class DenseNet(PreActivationNet):
    """DenseNet-BC (Huang et al. 2017) for 32×32 inputs: a 3×3 stem conv to 2·growth channels,
    three dense blocks of (depth − 4)/6 bottleneck layers, transitions between them (the
    scheme's ops, a 1×1 conv keeping ``compression`` of the channels, 2×2 average pool), the
    scheme's ops once more, global pool, ``head`` ops, classifier. DenseNet-BC-100-12 is
    their CIFAR net of 0.8 M parameters."""

    size_keys = ("depth", "growth_rate", "compression")

    def __init__(
        self,
        scheme: Sequence[str],
        depth: int = 100,
        growth_rate: int = 12,
        compression: float = 0.5,
        num_classes: int = 10,
        head: Sequence[str] = (),
        in_channels: int = 3,
        make_ops: MakeOps = DEFAULT_OPS,
        inner: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.scheme, self.name = tuple(scheme), f"DenseNet-BC-{depth}-{growth_rate}"
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=has_bias(scheme))
        parts: list[tuple[str, nn.Module]] = []
        for b in range(3):
            if b > 0:
                parts.append((f"transition{b}", self._transition(channels, compression, make_ops)))
                channels = int(channels * compression)
            layers = []
            for _ in range(units_per_stage(depth)):
                layers.append(DenseLayer(scheme, channels, growth_rate, make_ops, inner))
                channels += growth_rate
            parts.append((f"block{b + 1}", nn.Sequential(*layers)))
        self.features = named(parts)
        self._finish(scheme, channels, head, num_classes, make_ops)

    def _transition(self, channels: int, compression: float, make_ops: MakeOps) -> nn.Sequential:
        conv = nn.Conv2d(channels, int(channels * compression), 1, bias=has_bias(self.scheme))
        last = [("conv", conv), ("pool", nn.AvgPool2d(2))]
        return ops_sequence(self.scheme, channels, make_ops, dims=2, last=last)

    @classmethod
    def from_config(cls, config: ModelConfig, scheme: Sequence[str], **kw: Any) -> DenseNet:
        return cls(scheme, config.depth or 100, config.growth_rate, config.compression, **kw)


class Architecture(Protocol):
    """A model class as ``build_model`` makes it: from the config and the scheme; the keys
    of ``ModelConfig`` it reads that set its size."""

    size_keys: tuple[str, ...]

    def from_config(self, config: ModelConfig, scheme: Sequence[str], **kw: Any) -> nn.Module: ...


# model.arch → the class; each takes what its design needs from the config
ARCHITECTURES: dict[str, Architecture] = {
    "vgg": VGG,
    "resnet": PreResNet,
    "wrn": WideResNet,
    "densenet": DenseNet,
}


def init_weights(model: nn.Module, seed: int) -> None:
    """Initialise each conv/linear layer from its own generator seeded by (seed, layer index).

    Layers then get the same weights under every scheme, even where schemes differ in which
    layers have a bias or BN (which would shift one shared random stream).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for index, layer in enumerate(layers):
        generator = torch.Generator().manual_seed(seed * 10_007 + index)
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(
                layer.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
        else:
            bound = layer.in_features**-0.5  # nn.Linear's own default range
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def build_model(
    config: ModelConfig,
    scheme: Scheme,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    seed: int = 0,
) -> nn.Module:
    """The network of ``config.arch`` for ``scheme``, for images of ``in_channels`` channels
    in ``num_classes`` classes, initialised from ``seed``. A run's network comes from
    ``runs.network``, which knows the data's shape."""
    model = _assemble(config, scheme, num_classes, in_channels)
    init_weights(model, seed)
    return model


def _assemble(config: ModelConfig, scheme: Scheme, num_classes: int, in_channels: int) -> nn.Module:
    """``build_model``'s network with torch's default initialisation."""
    # bound once here, so the classes below never unpack the layer options themselves
    make_ops = partial(
        build_ops, act=config.activation, dropout=config.dropout, uout_beta=config.uout_beta
    )
    architecture = ARCHITECTURES[config.arch]
    return architecture.from_config(
        config, scheme.ops, num_classes=num_classes, head=scheme.head, in_channels=in_channels,
        make_ops=make_ops, inner=scheme.inner,
    )  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def planned_parameters(
    config: ModelConfig, scheme: Scheme, *, num_classes: int = 10, in_channels: int = 3
) -> int:
    """The parameters ``build_model`` would make, counted without building it: on the meta
    device, where tensors have a shape and no storage, so any size costs nothing."""
    with torch.device("meta"):
        return count_parameters(_assemble(config, scheme, num_classes, in_channels))


def size_keys(config: ModelConfig) -> dict[str, Any]:
    """The ``model`` keys that set how many parameters ``config``'s architecture has, with
    their values."""
    return {key: getattr(config, key) for key in ARCHITECTURES[config.arch].size_keys}
