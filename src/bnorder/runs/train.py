"""Training one run: seeding, the optimisation loop, evaluation, and the run's state.

Nothing here prints or writes files: ``Trainer.run_epoch`` reports progress through
``on_step`` and returns the epoch's ``EpochRow``; the run loop (runloop.py) measures, writes
and checkpoints. The process's threads and cuDNN settings are ``configure_process``'s, which
the caller calls once; the Trainer is handed its loaders (``runloop.make_loaders``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bnorder.data.loaders import Loader
from bnorder.runs.config import ConfigError, TrainConfig
from bnorder.runs.metrics import EpochRow
from bnorder.runs.network import NETWORK_KEY, NetworkSpec


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


def configure_process(config: TrainConfig, device: torch.device) -> None:
    """The process-wide settings a run wants: its CPU threads (``train.threads``), and cuDNN's
    kernel search on CUDA (shapes are fixed, so the search pays off)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


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
class DeviceOptions:
    """How a run uses its device, as resolved (recorded in its run.json as ``speed``)."""

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


def resolve_device_options(
    config: TrainConfig, device: torch.device, arch: str = "vgg"
) -> DeviceOptions:
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
        # residual nets with strided 1×1 shortcuts: torch's CPU path for those is slow in NHWC
        channels_last = not (device.type == "cpu" and arch in ("resnet", "wrn"))
    return DeviceOptions(
        precision=precision,
        channels_last=channels_last,
        compile=config.compile,
        threads=torch.get_num_threads(),  # as configure_process left them
        cudnn_benchmark=device.type == "cuda",
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, options: DeviceOptions) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) in eval mode, no augmentation."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    for images, labels in loader.epoch():
        with options.autocast(loader.device):
            logits = model(options.inputs(images))
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
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


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names: SGD, the one the literature compares with (the
    config admits no other yet)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


class Trainer:
    """One run — model, optimiser, schedule — advanced an epoch at a time over its loaders.

    ``state_dict()`` after an epoch is a complete checkpoint: a Trainer built with the same
    arguments and given it continues exactly where this one stopped (bit for bit on CPU).
    """

    CHECKPOINT_FORMAT = 3

    def __init__(
        self,
        *,
        network: NetworkSpec,
        train_config: TrainConfig,
        seed: int,
        device: torch.device,
        loaders: tuple[Loader, Loader],
    ) -> None:
        """``loaders``: (train, test), from ``runloop.make_loaders``."""
        self.config, self.device, self.epoch = train_config, device, 0  # epochs completed
        options = resolve_device_options(train_config, device, network.model.arch)
        self.device_options = options
        seed_everything(seed)
        self.network = network
        self.model = network.build(seed)
        memory_format = (
            torch.channels_last if self.device_options.channels_last else torch.preserve_format
        )
        self.model.to(device, memory_format=memory_format)
        # what the steps call: the model, or torch.compile's wrapper of it (which shares its
        # parameters; checkpoints use the model's names)
        self.runtime_model = self.model
        if train_config.compile:
            # each run compiles afresh: a sweep's earlier graphs would otherwise use up the
            # recompile limit, and later runs would fall back to eager without a word
            torch.compiler.reset()
            self.runtime_model = torch.compile(self.model)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.device_options.precision == "fp16"
        )
        self.first_step_seconds: float | None = None  # includes compiling, where compiled
        self.train_loader, self.test_loader = loaders
        self.optimizer = make_optimizer(train_config, self.model)
        self.steps_per_epoch = len(self.train_loader)
        warmup_steps = round(train_config.warmup_epochs * self.steps_per_epoch)
        total_steps = train_config.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(train_config.schedule, warmup_steps, total_steps)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=train_config.label_smoothing)

    @property
    def speed_record(self) -> dict[str, Any]:
        """What run.json records as ``speed``: the device options as resolved, and the first
        step's time (compiling included)."""
        return {**asdict(self.device_options), "first_step_seconds": self.first_step_seconds}

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def run_epoch(self, on_step: Callable[[int, int], None] | None = None) -> EpochRow:
        """Train one epoch, evaluate, and return its metrics. ``on_step(step, steps)`` is
        called after every optimiser step. Raises ``Diverged`` on a non-finite loss."""
        epoch, started = self.epoch + 1, time.perf_counter()
        self.runtime_model.train()
        # Sums stay on the device: one sync per epoch, not per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen, lr = 0, self.optimizer.param_groups[0]["lr"]
        for step, (images, labels) in enumerate(self.train_loader.epoch(epoch), start=1):
            lr = self.optimizer.param_groups[0]["lr"]
            logits, loss = self.train_step(images, labels)
            self.scheduler.step()
            if self.first_step_seconds is None:
                self._time_first_step(started)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if on_step is not None:
                on_step(step, self.steps_per_epoch)
        train_loss, train_seconds = loss_sum.item() / seen, time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        test_loss, test_acc = evaluate(self.runtime_model, self.test_loader, self.device_options)
        if not math.isfinite(test_loss):
            raise Diverged(f"test loss became {test_loss} in epoch {epoch}")
        self.epoch = epoch
        return EpochRow(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=correct.item() / seen,
            test_loss=test_loss,
            test_acc=test_acc,
            lr=lr,
            epoch_seconds=time.perf_counter() - started,  # training and testing
            images_per_second=seen / train_seconds,
        )

    def _time_first_step(self, started: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first_step_seconds = time.perf_counter() - started

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on one batch (the model in train mode); returns logits and loss.
        The schedule is the caller's: benchmarks time this step alone."""
        with self.device_options.autocast(self.device):
            logits = self.runtime_model(self.device_options.inputs(images))
            loss = self.criterion(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16 only: scaled against underflow
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.CHECKPOINT_FORMAT,
            NETWORK_KEY: self.network.record(),  # what rebuilds the model from this alone
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.device),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not supported")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.epoch = int(state["epoch"])
