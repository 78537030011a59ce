"""Training one run: seeding, the optimisation loop and evaluation.

Nothing here prints; progress goes to the caller through ``on_step`` and ``on_epoch``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnorder.config import ConfigError, ModelConfig, TrainConfig
from bnorder.data import Cifar10, DeviceLoader
from bnorder.models import build_model

EpochRow = dict[str, Any]


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} asked for, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r} asked for, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {name!r} asked for, but MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr for the step about to be taken (LambdaLR's convention).

    Linear warm-up over ``warmup_steps``, then ``cosine`` to zero, ``onecycle`` (linear to zero,
    the triangular schedule of fast CIFAR-10 trainers) or ``constant``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) in eval mode, no augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    for images, labels in loader.epoch():
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    n = len(loader.labels)
    return loss_sum.item() / n, correct.item() / n


def train_run(
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    ops: Sequence[str],
    seed: int,
    data: Cifar10,
    device: torch.device,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochRow], None] | None = None,
) -> list[EpochRow]:
    """Train the model for ``ops`` from ``seed`` and return one metrics row per epoch.

    ``on_step(step, steps_per_epoch)`` is called after every optimiser step and
    ``on_epoch(row)`` after every epoch's evaluation. Raises ``Diverged`` on a non-finite loss.
    """
    cfg = train_config
    seed_everything(seed)
    model = build_model(model_config, ops, num_classes=len(data.classes), seed=seed).to(device)
    train_loader = DeviceLoader(
        data.train,
        batch_size=cfg.batch_size,
        device=device,
        train=True,
        augment=cfg.augment,
        seed=seed,
    )
    test_loader = DeviceLoader(
        data.test, batch_size=cfg.eval_batch_size, device=device, train=False
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = len(train_loader)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg.schedule, warmup_steps, cfg.epochs * steps_per_epoch)
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    rows: list[EpochRow] = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        # Sums stay on the device: one sync per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for step, (images, labels) in enumerate(train_loader.epoch(epoch), start=1):
            lr = optimizer.param_groups[0]["lr"]
            logits = model(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if on_step is not None:
                on_step(step, steps_per_epoch)
        train_loss = loss_sum.item() / seen
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        test_loss, test_acc = evaluate(model, test_loader)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds,
        }
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows
