"""Training one run: seeding, the optimisation loop, evaluation, and the run's state.

Nothing here prints: ``Trainer.run_epoch`` reports progress through ``on_step`` and returns
the epoch's metrics; the sweep (experiment.py) writes them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Speed:
    """A run's device options as resolved (recorded in its run.json)."""

    precision: str  # bf16, fp16 or fp32: the autocast dtype of the forward pass
    channels_last: bool
    compile: bool
    threads: int  # CPU threads torch uses
    cudnn_benchmark: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images


def resolve_speed(config: TrainConfig, device: torch.device, arch: str = "vgg") -> Speed:
    """``auto`` made concrete for the device *type* and architecture, both part of a run's
    identity: bf16 on CUDA (Ampere or newer; older GPUs emulate it slowly: set fp16 there),
    fp32 elsewhere; channels_last on (faster on CPU, as the benchmark measures, and what tensor
    cores want) except for a ResNet on CPU, whose strided 1×1 shortcut convolution is
    pathologically slow in channels_last there (torch 2.14, measured)."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    channels_last = config.channels_last
    if channels_last == "auto":
        channels_last = not (device.type == "cpu" and arch == "resnet")
    return Speed(
        precision=precision,
        channels_last=channels_last,
        compile=config.compile,
        threads=config.threads or torch.get_num_threads(),
        cudnn_benchmark=device.type == "cuda",
    )


FP32 = Speed("fp32", channels_last=False, compile=False, threads=1, cudnn_benchmark=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, speed: Speed = FP32) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) in eval mode, no augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    for images, labels in loader.epoch():
        with speed.autocast(loader.device):
            logits = model(speed.inputs(images))
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
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

    CHECKPOINT_FORMAT = 3

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
        loaders: tuple[Any, Any] | None = None,
    ) -> None:
        """``loaders``: (train, test) loaders with DeviceLoader's interface, in place of the
        device loaders (the torchvision pipeline)."""
        cfg = self.config = train_config
        self.device = device
        self.epoch = 0  # epochs completed
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.speed = resolve_speed(cfg, device, model_config.arch)
        if self.speed.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        seed_everything(seed)
        self.model = build_model(
            model_config, ops, head=head, num_classes=len(data.classes), seed=seed
        )
        memory_format = torch.channels_last if self.speed.channels_last else torch.preserve_format
        self.model.to(device, memory_format=memory_format)
        # the compiled module shares the model's parameters; checkpoints use the model's names
        self.forward = self.model
        if cfg.compile:
            # each run compiles afresh: a sweep's earlier graphs would otherwise use up the
            # recompile limit, and later runs would fall back to eager without a word
            torch.compiler.reset()
            self.forward = torch.compile(self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.speed.precision == "fp16")
        self.first_step_seconds: float | None = None  # includes compiling, where compiled
        self.train_loader, self.test_loader = loaders or (
            DeviceLoader(
                data.train,
                batch_size=cfg.batch_size,
                device=device,
                train=True,
                augment=cfg.augment,
                seed=seed,
            ),
            DeviceLoader(data.test, batch_size=cfg.eval_batch_size, device=device, train=False),
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
    def options(self) -> dict[str, Any]:
        """The device options as resolved, and the first step's time (compiling included)."""
        return {**asdict(self.speed), "first_step_seconds": self.first_step_seconds}

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def run_epoch(self, on_step: Callable[[int, int], None] | None = None) -> EpochRow:
        """Train one epoch, evaluate, and return its metrics row. ``on_step(step, steps)`` is
        called after every optimiser step. Raises ``Diverged`` on a non-finite loss."""
        epoch = self.epoch + 1
        model, optimizer, device = self.forward, self.optimizer, self.device
        started = time.perf_counter()
        model.train()
        # Sums stay on the device: one sync per epoch, not per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        for step, (images, labels) in enumerate(self.train_loader.epoch(epoch), start=1):
            lr = optimizer.param_groups[0]["lr"]
            logits, loss = self.train_step(images, labels)
            self.scheduler.step()
            if self.first_step_seconds is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.first_step_seconds = time.perf_counter() - started
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if on_step is not None:
                on_step(step, self.steps_per_epoch)
        train_loss = loss_sum.item() / seen
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        test_loss, test_acc = evaluate(model, self.test_loader, self.speed)
        if not math.isfinite(test_loss):
            raise Diverged(f"test loss became {test_loss} in epoch {epoch}")
        self.epoch = epoch
        epoch_seconds = time.perf_counter() - started  # training and testing, not diagnostics
        shift = shift_summary([])
        every = self.config.vshift_every
        if self.shift_loader is not None and (self.done or (every and epoch % every == 0)):
            rows = self.measure_shift()
            self.shift_rows += [{"epoch": epoch, **r, "recalibrated": False} for r in rows]
            shift = shift_summary(rows)
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "images_per_second": seen / train_seconds,
            **shift,
        }

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on one batch (the model in train mode); returns logits and loss.
        The schedule is the caller's: benchmarks time this step alone."""
        with self.speed.autocast(self.device):
            logits = self.forward(self.speed.inputs(images))
            loss = self.criterion(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16 only: scaled against underflow
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, loss

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
        test_loss, test_acc = evaluate(model, self.test_loader, self.speed)
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
            "scaler": self.scaler.state_dict(),
            "shift_rows": self.shift_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not supported")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.shift_rows = [row for row in state["shift_rows"] if not row["recalibrated"]]
        self.epoch = int(state["epoch"])
