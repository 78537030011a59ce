"""Training one run: seeding, the optimisation loop, evaluation, and the run's state.

Nothing here prints: ``Trainer.run_epoch`` reports progress through ``on_step`` and returns
the epoch's metrics; the sweep (experiment.py) writes them.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnorder.config import ConfigError, ModelConfig, TrainConfig
from bnorder.data import Cifar10, DeviceLoader, Split, balanced_subset
from bnorder.diagnostics import bn_layers, recalibrate_bn, variance_shift
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


class Images:
    """A loader's images without labels, re-iterable (the BN diagnostics pass over them more
    than once)."""

    def __init__(self, loader: DeviceLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (images for images, _ in self.loader.epoch())


def shift_summary(rows: list[dict[str, Any]], suffix: str = "") -> dict[str, float | None]:
    """The largest and the mean shift over a model's BN layers; None without BN layers."""
    shifts = [row["shift"] for row in rows]
    return {
        f"vshift_max{suffix}": max(shifts) if shifts else None,
        f"vshift_mean{suffix}": sum(shifts) / len(shifts) if shifts else None,
    }


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

    The variance shift of every BN layer is measured on a fixed, un-augmented, class-balanced
    sample of the training set (``train.vshift_*``), with the network in eval mode: it draws
    no random numbers and changes no state, so training is the same with or without it.
    """

    CHECKPOINT_FORMAT = 2

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
        self.train_split, self.num_classes = data.train, len(data.classes)
        self.shift_loader = None
        if cfg.vshift_sample:
            self.shift_loader = self._sample_loader(
                cfg.vshift_sample, "train.vshift_sample", cfg.eval_batch_size
            )
        # one row per BN layer and measurement: epoch, layer, name, running_var, real_var,
        # shift, recalibrated
        self.shift_rows: list[dict[str, Any]] = []
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
        shift = shift_summary([])
        every = self.config.vshift_every
        if self.shift_loader is not None and (self.done or (every and epoch % every == 0)):
            rows = self.measure_shift(model)
            self.shift_rows += [{"epoch": epoch, **r, "recalibrated": False} for r in rows]
            shift = shift_summary(rows)
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds,
            **shift,
        }

    def measure_shift(self, model: nn.Module | None = None) -> list[dict[str, Any]]:
        """Per BN layer of ``model`` (default: the one trained): index, name, running_var,
        real_var, shift, on the fixed sample. Empty without BN or with ``vshift_sample: 0``."""
        if self.shift_loader is None:
            return []
        return variance_shift(model or self.model, Images(self.shift_loader))

    def recalibrate(self) -> dict[str, Any]:
        """Re-estimate BN's statistics with noise off (``train.recalibration``) on a copy of
        the model, and test it: ``test_loss_recalibrated``, ``test_acc_recalibrated`` and the
        shift after (``vshift_*_recalibrated``). The trained model itself is left as it is.
        Empty where the model has no BN layer."""
        if not bn_layers(self.model):
            return {}
        cfg = self.config
        model = copy.deepcopy(self.model)
        # batch mode's statistics depend on the batch size: that of training, as update_bn's
        loader = self._sample_loader(
            cfg.recalibration_sample, "train.recalibration_sample", cfg.batch_size
        )
        recalibrate_bn(model, Images(loader), mode=cfg.recalibration)
        test_loss, test_acc = evaluate(model, self.test_loader)
        result: dict[str, Any] = {
            "test_loss_recalibrated": test_loss,
            "test_acc_recalibrated": test_acc,
        }
        if self.shift_loader is not None:
            rows = self.measure_shift(model)
            self.shift_rows += [{"epoch": self.epoch, **r, "recalibrated": True} for r in rows]
            result.update(shift_summary(rows, suffix="_recalibrated"))
        return result

    def _sample_loader(self, size: int | None, what: str, batch_size: int) -> DeviceLoader:
        """Un-augmented, in a fixed order: a class-balanced sample of the training set (all of
        it where ``size`` is None or not smaller)."""
        split: Split = self.train_split
        if size is not None and size < len(split):
            split = balanced_subset(split, size, self.num_classes, what=what)
        return DeviceLoader(split, batch_size=batch_size, device=self.device, train=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
            "shift_rows": self.shift_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not supported")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.device)
        self.shift_rows = [row for row in state["shift_rows"] if not row["recalibrated"]]
        self.epoch = int(state["epoch"])
