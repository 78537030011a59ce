"""The CNNs under test: a VGG-style net (the default) and a pre-activation ResNet. The scheme
decides what follows every conv and hidden linear layer (in the ResNet: what precedes every
conv of a residual branch)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bnorder.config import ModelConfig
from bnorder.layers import build_ops, has_bias


def block(layer: nn.Module, scheme: Sequence[str], channels: int, **ops_kwargs) -> nn.Sequential:
    """``layer`` then the scheme's ops, named by token: the printed tree reads as the order."""
    dims = 2 if isinstance(layer, nn.Conv2d) else 1
    ops = build_ops(scheme, channels, dims=dims, **ops_kwargs)
    name = "conv" if dims == 2 else "fc"
    return nn.Sequential(OrderedDict([(name, layer), *zip(scheme, ops, strict=True)]))


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
        act: str | type[nn.Module] = "relu",
        dropout: float = 0.3,
        in_channels: int = 3,
        head: Sequence[str] = (),
        uout_beta: float = 0.1,
    ) -> None:
        super().__init__()
        self.scheme = tuple(scheme)
        ops_kwargs = {"act": act, "dropout": dropout, "uout_beta": uout_beta}
        bias = has_bias(self.scheme)
        stages: list[tuple[str, nn.Module]] = []
        channels = in_channels
        for s, width in enumerate(widths):
            if s > 0:
                stages.append((f"pool{s}", nn.MaxPool2d(2)))
            convs = []
            for _ in range(convs_per_stage):
                conv = nn.Conv2d(channels, width, 3, padding=1, bias=bias)
                convs.append(block(conv, self.scheme, width, **ops_kwargs))
                channels = width
            stages.append((f"stage{s + 1}", nn.Sequential(*convs)))
        self.features = nn.Sequential(OrderedDict(stages))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        hidden_blocks = []
        for width in hidden:
            hidden_blocks.append(
                block(nn.Linear(channels, width, bias=bias), self.scheme, width, **ops_kwargs)
            )
            channels = width
        self.hidden = nn.Sequential(*hidden_blocks)
        head_ops = build_ops(head, channels, dims=1, **ops_kwargs)
        self.head = nn.Sequential(OrderedDict(zip(head, head_ops, strict=True)))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.hidden(self.pool(self.features(x)))))


class PreActBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016, "Identity Mappings"): the scheme's ops
    come before each of the branch's two 3×3 convs, x + branch(x). With ``[bn, act]`` this is
    PreResNet's BN → ReLU → conv; with ``[bn, act, dropout]`` it is WRN's dropout between the
    convs (and before the first). Where the shape changes, a 1×1 conv shortcut takes the
    pre-activated input, as in He et al.'s pre-activation ResNet."""

    def __init__(
        self, scheme: Sequence[str], in_channels: int, channels: int, stride: int, **ops_kwargs
    ) -> None:
        super().__init__()
        bias = has_bias(scheme)  # the conv is followed by the next ops, or the next block's
        ops1 = build_ops(scheme, in_channels, dims=2, **ops_kwargs)
        ops2 = build_ops(scheme, channels, dims=2, **ops_kwargs)
        conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=bias)
        conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.pre = nn.Sequential(OrderedDict(zip(scheme, ops1, strict=True)))
        self.branch = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", conv1),
                    *((f"{t}2", m) for t, m in zip(scheme, ops2, strict=True)),
                    ("conv2", conv2),
                ]
            )
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
        act: str | type[nn.Module] = "relu",
        dropout: float = 0.3,
        head: Sequence[str] = (),
        uout_beta: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.scheme = tuple(scheme)
        ops_kwargs = {"act": act, "dropout": dropout, "uout_beta": uout_beta}
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=has_bias(scheme))
        stages, channels = [], widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(PreActBlock(scheme, channels, width, stride, **ops_kwargs))
                channels = width
            stages.append((f"stage{s + 1}", nn.Sequential(*blocks)))
        self.features = nn.Sequential(OrderedDict(stages))
        final = build_ops(scheme, channels, dims=2, **ops_kwargs)
        self.final = nn.Sequential(OrderedDict(zip(scheme, final, strict=True)))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head_ops = build_ops(head, channels, dims=1, **ops_kwargs)
        self.head = nn.Sequential(OrderedDict(zip(head, head_ops, strict=True)))
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
    common = {
        "num_classes": num_classes,
        "act": config.activation,
        "dropout": config.dropout,
        "head": head,
        "uout_beta": config.uout_beta,
    }
    if config.arch == "resnet":
        model: nn.Module = PreResNet(
            scheme, widths=config.widths, blocks_per_stage=config.blocks_per_stage, **common
        )
    else:
        model = VGG(
            scheme,
            widths=config.widths,
            convs_per_stage=config.convs_per_stage,
            hidden=config.hidden,
            **common,
        )
    init_weights(model, seed)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
