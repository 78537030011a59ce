"""Why a scheme loses: the variance shift of Li et al. (CVPR 2019), and BN re-calibration.

In training, dropout before a BN layer changes the variance of what that BN sees, and BN's
running variance learns that; at test time dropout is off, so the variance BN actually sees
differs. Per BN layer, the shift is max(real/running, running/real) with both variances
averaged over channels: ``running`` is BN's running variance, ``real`` the variance of the
layer's input with the whole network in eval mode. Measured with forward hooks: no change to
the model's code. The Trainer measures it during training (``train.vshift_every``) and
re-calibrates after it (``train.recalibrate_bn``); ``bnorder audit RUN_DIR`` measures a
finished run from its checkpoint.

``real`` is a population variance; BN's running variance averages unbiased batch variances,
which for BatchNorm1d on a batch of B samples puts a floor of B/(B-1) under the shift (about
1.008 at B = 128; negligible for conv layers, where a batch holds B·H·W values per channel).

``batches`` are normalised images, un-augmented and the same on every call; functions that
pass over them more than once need a re-iterable (a list, or a loader's images).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from bnorder.shift.kinds import bn_layers, noise_off


class _Stop(Exception):
    """Ends a forward pass once the last layer watched has seen its input."""


class InputWatch:
    """Per-channel sums of each watched layer's inputs over the forward passes made while it
    is open (see ``watch_inputs``)."""

    def __init__(self, layers: list[nn.Module], stop: bool) -> None:
        self.layers, self.stop = layers, stop
        self.sums: list[Any] = [None] * len(layers)
        self.counts = [0] * len(layers)

    def hook(self, index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            # sums of squares want float64; MPS has none
            x = inputs[0].to(torch.float32 if inputs[0].device.type == "mps" else torch.float64)
            dims = [d for d in range(x.dim()) if d != 1]  # all but channels
            s1, s2 = x.sum(dims), (x * x).sum(dims)
            old = self.sums[index]
            self.sums[index] = (s1, s2) if old is None else (old[0] + s1, old[1] + s2)
            self.counts[index] += x.numel() // x.shape[1]
            if self.stop and index == len(self.layers) - 1:
                raise _Stop

        return record

    def statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the per-channel mean and (population) variance of its inputs."""
        stats = []
        for (s1, s2), n in zip(self.sums, self.counts, strict=True):
            mean = s1 / n
            stats.append((mean, (s2 / n - mean * mean).clamp_min(0)))
        return stats


@contextlib.contextmanager
def watch_inputs(layers: list[nn.Module], *, stop: bool = False) -> Iterator[InputWatch]:
    """Forward pre-hooks on ``layers`` while open: every forward pass adds the layers' inputs
    to the watch's sums, so a pass made for another purpose (an evaluation) measures too.
    ``stop``: cut each pass short, raising ``_Stop``, once the last layer has its input."""
    watch = InputWatch(layers, stop)
    handles = [layer.register_forward_pre_hook(watch.hook(i)) for i, layer in enumerate(layers)]
    try:
        yield watch
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def input_statistics(
    model: nn.Module,
    layers: list[nn.Module],
    batches: Iterable[torch.Tensor],
    *,
    stop: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the per-channel mean and (population) variance of its input over all
    ``batches``, with the whole network in eval mode. ``stop``: cut each forward pass short
    once the last of ``layers`` has its input (nothing after it is needed)."""
    was_training = model.training
    try:
        model.eval()
        with watch_inputs(layers, stop=stop) as watch:
            for images in batches:
                with contextlib.suppress(_Stop):
                    model(images)
    finally:
        model.train(was_training)
    return watch.statistics()


def shift_rows(
    layers: list[tuple[str, nn.modules.batchnorm._BatchNorm]],
    stats: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[dict[str, Any]]:
    """One row per BN layer: index, name, running_var, real_var (from ``stats``, its inputs'
    statistics in eval mode) and shift (≥ 1; 1 is no shift)."""
    rows = []
    for index, ((name, bn), (_, real)) in enumerate(zip(layers, stats, strict=True)):
        running_var = float(bn.running_var.float().mean())
        real_var = float(real.mean())
        # a channel-averaged variance of 0 (every channel dead) is an infinite shift
        low, high = sorted((running_var, real_var))
        shift = high / low if low > 0 else math.inf
        rows.append(
            {
                "layer": index,
                "name": name,
                "running_var": running_var,
                "real_var": real_var,
                "shift": shift,
            }
        )
    return rows


def variance_shift(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[dict[str, Any]]:
    """One row per BN layer: index, name, running_var, real_var, shift (≥ 1; 1 is no shift).
    ``batches`` should be un-augmented and fixed; they are iterated once. No rows where the
    model has no BN layer."""
    layers = bn_layers(model)
    if not layers:
        return []
    return shift_rows(layers, input_statistics(model, [m for _, m in layers], batches))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, batches: Iterable[torch.Tensor], mode: str = "sequential"
) -> None:
    """Re-estimate every BN layer's running mean and variance with noise off.

    ``sequential``: layer by layer in depth order, each from its inputs in eval mode with the
    earlier layers already re-estimated (the shift measured on the same data is then 1).
    ``batch``: one pass in train mode with noise off, a cumulative average of batch
    statistics, as ``torch.optim.swa_utils.update_bn`` does; upstream BN layers normalise with
    batch statistics during it, so some shift remains when measured in eval mode.

    Sequential goes in registration order, which must be the order of execution (it is in
    models.py). ``batches`` must be re-iterable: sequential passes over them once per layer,
    each pass cut short after the layer it re-estimates.
    """
    if mode not in ("sequential", "batch"):
        raise ValueError(f"recalibration mode must be sequential or batch, got {mode!r}")
    layers = bn_layers(model)
    was_training = model.training
    if mode == "sequential":
        for _, bn in layers:
            ((mean, var),) = input_statistics(model, [bn], batches, stop=True)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        return
    momenta = {bn: bn.momentum for _, bn in layers}
    try:
        noise_off(model)  # every kind shift.kinds knows, and functional dropout too
        for _, bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
        for images in batches:
            model(images)
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.train(was_training)
