"""Training one run: seeding, the optimisation loop, evaluation, and the run's state.

Nothing here prints: ``Trainer.run_epoch`` reports progress through ``on_step`` and returns
the epoch's metrics; the sweep (experiment.py) writes them.
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


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random stream a run draws from, in types that ``torch.load(weights_only=True)``
    accepts (tensors, numbers, lists). The data order needs none: it is drawn from a generator
    seeded by (seed, epoch)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        # the run's own GPU only: a resume on a node with another GPU count still works
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """One run — model, data, optimiser, schedule — advanced an epoch at a time.

    ``state_dict()`` after an epoch is a complete checkpoint: a Trainer built with the same
    arguments and given it continues exactly where this one stopped (bit for bit on CPU).
    """

    CHECKPOINT_FORMAT = 1

    def __init__(
        self,
        *,
        model_config: ModelConfig,
        train_config: TrainConfig,
        ops: Sequence[str],
        seed: int,
        data: Cifar10,
        device: torch.device,
        head: Sequence[str] = (),
    ) -> None:
        cfg = self.config = train_config
        self.device = device
        self.epoch = 0  # epochs completed
        seed_everything(seed)
        self.model = build_model(
            model_config, ops, head=head, num_classes=len(data.classes), seed=seed
        )
        self.model.to(device)
        self.train_loader = DeviceLoader(
            data.train,
            batch_size=cfg.batch_size,
            device=device,
            train=True,
            augment=cfg.augment,
            seed=seed,
        )
        self.test_loader = DeviceLoader(
            data.test, batch_size=cfg.eval_batch_size, device=device, train=False
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
        self.steps_per_epoch = len(self.train_loader)
        warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_factor(cfg.schedule, warmup_steps, cfg.epochs * self.steps_per_epoch),
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def run_epoch(self, on_step: Callable[[int, int], None] | None = None) -> EpochRow:
        """Train one epoch, evaluate, and return its metrics row. ``on_step(step, steps)`` is
        called after every optimiser step. Raises ``Diverged`` on a non-finite loss."""
        epoch = self.epoch + 1
        model, optimizer, device = self.model, self.optimizer, self.device
        started = time.perf_counter()
        model.train()
        # Sums stay on the device: one sync per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        for step, (images, labels) in enumerate(self.train_loader.epoch(epoch), start=1):
            lr = optimizer.param_groups[0]["lr"]
            logits = model(images)
            loss = self.criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if on_step is not None:
                on_step(step, self.steps_per_epoch)
        train_loss = loss_sum.item() / seen
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        test_loss, test_acc = evaluate(model, self.test_loader)
        if not math.isfinite(test_loss):
            raise Diverged(f"test loss became {test_loss} in epoch {epoch}")
        self.epoch = epoch
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not supported")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.device)
        self.epoch = int(state["epoch"])
