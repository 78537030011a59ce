"""Why a scheme loses: the variance shift of Li et al. (CVPR 2019), and BN re-calibration.

In training, dropout before a BN layer changes the variance of what that BN sees, and BN's
running variance learns that; at test time dropout is off, so the variance BN actually sees
differs. Per BN layer, the shift is max(real/running, running/real) with both variances
averaged over channels: ``running`` is BN's running variance, ``real`` the variance of the
layer's input with the whole network in eval mode. Measured with forward hooks: no change to
the model's code. ``bnorder diagnose RUN_DIR`` measures a run after the fact from its
checkpoint; measuring every epoch during the sweep is not wired in yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnorder.config import build_config
from bnorder.data import DataError, DeviceLoader, balanced_subset, load_cifar10
from bnorder.layers import GaussianDropout, Uout
from bnorder.models import build_model
from bnorder.results import RUN_FILE, checkpoints, load_checkpoint, read_json
from bnorder.train import evaluate

NOISE = (nn.Dropout, nn.Dropout2d, GaussianDropout, Uout)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BN layer with its name, in depth (registration) order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@torch.no_grad()
def input_statistics(
    model: nn.Module, layers: list[nn.Module], batches: Iterable[torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the per-channel mean and (population) variance of its input over all
    ``batches``, with the whole network in eval mode."""
    sums: list[Any] = [None] * len(layers)
    counts = [0] * len(layers)

    def hook(index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].double()
            dims = [d for d in range(x.dim()) if d != 1]  # all but channels
            s1, s2 = x.sum(dims), (x * x).sum(dims)
            sums[index] = (
                (s1, s2) if sums[index] is None else (sums[index][0] + s1, sums[index][1] + s2)
            )
            counts[index] += x.numel() // x.shape[1]

        return record

    was_training = model.training
    handles = [layer.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        model.eval()
        for images in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    stats = []
    for (s1, s2), n in zip(sums, counts, strict=True):
        mean = s1 / n
        stats.append((mean, (s2 / n - mean * mean).clamp_min(0)))
    return stats


def variance_shift(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[dict[str, Any]]:
    """One row per BN layer: index, name, running_var, real_var, shift (≥ 1; 1 is no shift).
    ``batches`` should be un-augmented and fixed, and is iterated once."""
    layers = bn_layers(model)
    stats = input_statistics(model, [m for _, m in layers], list(batches))
    rows = []
    for index, ((name, bn), (_, real)) in enumerate(zip(layers, stats, strict=True)):
        running_var = float(bn.running_var.double().mean())
        real_var = float(real.mean())
        shift = max(real_var / running_var, running_var / real_var)
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


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, batches: Iterable[torch.Tensor], mode: str = "sequential"
) -> None:
    """Re-estimate every BN layer's running mean and variance with noise layers off.

    ``sequential``: layer by layer in depth order, each from its inputs in eval mode with the
    earlier layers already re-estimated (the shift measured on the same data is then 1).
    ``batch``: one pass in train mode with noise off, a cumulative average of batch
    statistics, as ``torch.optim.swa_utils.update_bn`` does; upstream BN layers normalise with
    batch statistics during it, so some shift remains when measured in eval mode.
    """
    batches = list(batches)
    layers = bn_layers(model)
    was_training = model.training
    if mode == "sequential":
        for _, bn in layers:
            ((mean, var),) = input_statistics(model, [bn], batches)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        return
    if mode != "batch":
        raise ValueError(f"recalibration mode must be sequential or batch, got {mode!r}")
    momenta = {bn: bn.momentum for _, bn in layers}
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, NOISE):
                module.eval()
        for _, bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
        for images in batches:
            model(images)
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.train(was_training)


def diagnose_run(
    folder: str | Path, *, sample: int = 2000, recalibrate: bool = False
) -> dict[str, Any]:
    """Rebuild a finished (or interrupted) run's model from its run.json and newest checkpoint,
    and measure its variance shift on a fixed, un-augmented, class-balanced sample of the
    training set; with ``recalibrate``, also the test accuracy before and after sequential
    re-calibration on that sample. Raises DataError or ValueError with the path."""
    folder = Path(folder)
    try:
        info = read_json(folder / RUN_FILE)
        config = build_config({**info["config"], "output": str(folder)}, source=str(folder))
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder / RUN_FILE}: not a readable run ({err})") from None
    found = checkpoints(folder)
    if not found:
        raise DataError(f"{folder}: no checkpoint to rebuild the model from (keep_checkpoints)")
    state = load_checkpoint(found[0])
    (name, spec), seed = next(iter(config.schemes.items())), config.seeds[0]
    data = load_cifar10(
        config.data.root,
        download=False,
        cache_dir=config.data.cache_dir,
        train_subset=config.data.train_subset,
        test_subset=config.data.test_subset,
    )
    model = build_model(
        config.model, spec.ops, head=spec.head, num_classes=len(data.classes), seed=seed
    )
    model.load_state_dict(state["model"])
    cpu = torch.device("cpu")
    fixed = balanced_subset(
        data.train, min(sample, len(data.train)), len(data.classes), what="--sample"
    )
    batches = [x for x, _ in DeviceLoader(fixed, batch_size=500, device=cpu, train=False).epoch()]
    result: dict[str, Any] = {
        "scheme": name,
        "seed": seed,
        "epoch": state["epoch"],
        "checkpoint": found[0].name,
        "layers": variance_shift(model, batches),
    }
    if recalibrate:
        test = DeviceLoader(data.test, batch_size=1000, device=cpu, train=False)
        result["test_acc"] = evaluate(model, test)[1]
        recalibrate_bn(model, batches, mode="sequential")
        result["test_acc_recalibrated"] = evaluate(model, test)[1]
        result["layers_recalibrated"] = variance_shift(model, batches)
    return result
