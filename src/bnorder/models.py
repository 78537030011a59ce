"""The CNNs under test: a VGG-style net (the default) and a pre-activation ResNet, their weight
init, and ``build_model``, which binds a config's layer options once.

The scheme decides what follows every conv and hidden linear layer (in the ResNet: what
precedes every conv of a residual branch). The classes take a ``make_ops`` callable rather than
the options themselves (torchvision injects ``norm_layer`` the same way), and every named
sequence comes from ``named``: its names are the ``state_dict`` keys that checkpoints hold.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Protocol

import torch
from torch import nn

from bnorder.config import ModelConfig
from bnorder.layers import build_ops, has_bias


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.hidden(self.pool(self.features(x)))))


class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016, "Identity Mappings"): the scheme's ops
    come before each of the branch's two 3×3 convs, x + branch(x). With ``[bn, act]`` this is
    PreResNet's BN → ReLU → conv; with ``[bn, act, dropout]`` it is WRN's dropout between the
    convs (and before the first). Where the shape changes, a 1×1 conv shortcut takes the
    pre-activated input, as in He et al.'s pre-activation ResNet."""

    def __init__(
        self,
        scheme: Sequence[str],
        in_channels: int,
        channels: int,
        stride: int,
        make_ops: MakeOps = DEFAULT_OPS,
    ) -> None:
        super().__init__()
        bias = has_bias(scheme)  # the conv is followed by the next ops, or the next block's
        conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=bias)
        conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.pre = ops_sequence(scheme, in_channels, make_ops, dims=2)
        # suffixed "2": the ops before conv2, kept apart from those in ``pre`` by name
        self.branch = ops_sequence(
            scheme,
            channels,
            make_ops,
            dims=2,
            first=[("conv1", conv1)],
            last=[("conv2", conv2)],
            suffix="2",
        )
        self.shortcut: nn.Module | None = None  # identity
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pre(x)
        return (x if self.shortcut is None else self.shortcut(out)) + self.branch(out)


class PreResNet(nn.Module):
    """Pre-activation ResNet: a 3×3 stem conv, stages of residual blocks (stride 2 between
    stages), the scheme's ops once more after the last block (PreResNet's final BN-ReLU),
    global average pool, the scheme's ``head`` ops, a linear classifier. Widths (64, 128, 256,
    512) with 2 blocks each is PreResNet-18."""

    def __init__(
        self,
        scheme: Sequence[str],
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: int = 2,
        num_classes: int = 10,
        head: Sequence[str] = (),
        in_channels: int = 3,
        make_ops: MakeOps = DEFAULT_OPS,
    ) -> None:
        super().__init__()
        self.scheme = tuple(scheme)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=has_bias(scheme))
        stages, channels = [], widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(PreActBlock(scheme, channels, width, stride, make_ops))
                channels = width
            stages.append((f"stage{s + 1}", nn.Sequential(*blocks)))
        self.features = named(stages)
        self.final = ops_sequence(scheme, channels, make_ops, dims=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = ops_sequence(head, channels, make_ops, dims=1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.features(self.stem(x)))
        return self.classifier(self.head(self.pool(x)))


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
    scheme: Sequence[str],
    *,
    head: Sequence[str] = (),
    num_classes: int = 10,
    seed: int = 0,
) -> nn.Module:
    """The network of ``config.arch`` for ``scheme``, initialised from ``seed``."""
    # bound once here, so the classes below never unpack the layer options themselves
    make_ops = partial(
        build_ops, act=config.activation, dropout=config.dropout, uout_beta=config.uout_beta
    )
    model: nn.Module
    if config.arch == "resnet":
        model = PreResNet(
            scheme,
            widths=config.widths,
            blocks_per_stage=config.blocks_per_stage,
            num_classes=num_classes,
            head=head,
            make_ops=make_ops,
        )
    else:
        model = VGG(
            scheme,
            widths=config.widths,
            convs_per_stage=config.convs_per_stage,
            hidden=config.hidden,
            num_classes=num_classes,
            head=head,
            make_ops=make_ops,
        )
    init_weights(model, seed)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
