"""The run loop's diagnostics step, on a fixed sample of the training set after every epoch:
the loss and accuracy in eval mode, measured like the test figures, so that train and test
curves compare; in the same forward passes, after chosen epochs, the variance shift of every
BN layer (Li et al. 2019); and BN re-calibration after the last epoch. The measuring itself is
diagnostics.py's; this module decides when, on which images, and keeps the rows that go to
variance_shift.csv and into checkpoints.

The sample is class-balanced (``train.vshift_sample``; 0 measures nothing) and the network
is in eval mode: a measurement draws no random numbers and changes no state, so training is
the same with or without it. The eval-mode loss and accuracy take the sample plain, like the
test set; the shift and re-calibration take it augmented as in training, one fixed crop and
flip per image (``train.diagnostics_images``), because BN learnt its running statistics on
augmented batches: only the noise, switched off, then differs. The sample's passes run in
fp32 whatever the run's precision, so that the shift is measured exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bnorder.data.catalog import ImageData, Split
from bnorder.data.loaders import DeviceLoader, Loader, augmented_once, balanced_subset
from bnorder.runs.config import TrainConfig
from bnorder.runs.metrics import Recalibrated, SampleFigures
from bnorder.runs.train import DeviceOptions, evaluate
from bnorder.shift.kinds import bn_layers
from bnorder.shift.measure import (
    recalibrate_bn,
    shift_rows,
    variance_shift,
    watch_inputs,
)


class Images:
    """A loader's images without labels, re-iterable (the BN diagnostics pass over them more
    than once)."""

    def __init__(self, loader: DeviceLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (images for images, _ in self.loader.epoch())


def shift_summary(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The largest and the mean shift over a model's BN layers; None without BN layers."""
    shifts = [row["shift"] for row in rows]
    if not shifts:
        return None, None
    return max(shifts), sum(shifts) / len(shifts)


class ShiftMonitor:
    """Measures a run's variance shift when ``train.vshift_every`` says, and re-calibrates BN
    when ``train.recalibrate_bn`` says. ``rows``: one per BN layer and measurement (epoch,
    layer, name, running_var, real_var, shift, recalibrated), kept in checkpoints."""

    def __init__(
        self, config: TrainConfig, data: ImageData, device: torch.device, *, flip: bool = True
    ):
        """``flip``: whether training mirrors images (``data.flips``), as the augmented
        diagnostics images must."""
        self.config, self.train, self.stats, self.device = config, data.train, data.stats, device
        self.num_classes, self.flip = len(data.classes), flip
        self.rows: list[dict[str, Any]] = []
        self.sample = self.shift_sample = None
        if config.vshift_sample:
            size, what = config.vshift_sample, "train.vshift_sample"
            self.sample = self._sample_loader(size, what, config.eval_batch_size, augment=False)
            self.shift_sample = self._sample_loader(size, what, config.eval_batch_size)

    @property
    def augmented(self) -> bool:
        """Whether the shift and re-calibration take augmented images: as configured, where
        training augments at all."""
        return self.config.augment and self.config.diagnostics_images == "augmented"

    def due(self, epoch: int) -> bool:
        """Measured every ``vshift_every`` epochs and always after the last."""
        every = self.config.vshift_every
        last = epoch >= self.config.epochs
        return self.sample is not None and (last or bool(every and epoch % every == 0))

    def measure(self, model: nn.Module) -> list[dict[str, Any]]:
        """Per BN layer of ``model``: index, name, running_var, real_var, shift, on the fixed
        sample. Empty without BN or with ``vshift_sample: 0``."""
        if self.shift_sample is None:
            return []
        return variance_shift(model, Images(self.shift_sample))

    def after_epoch(self, model: nn.Module, epoch: int, options: DeviceOptions) -> SampleFigures:
        """The sample's loss and accuracy in eval mode; where due, the shift of every BN layer
        from the same forward passes, its rows kept."""
        if self.sample is None:
            return SampleFigures()
        layers = bn_layers(model) if self.due(epoch) else []
        # on plain images the shift comes from the evaluation's own passes
        watched = [] if self.augmented else [bn for _, bn in layers]
        with watch_inputs(watched) as watch:
            loss, accuracy = evaluate(
                model, self.sample, dataclasses.replace(options, precision="fp32")
            )
        if not layers:
            rows = []
        elif self.augmented:
            rows = self.measure(model)
        else:
            rows = shift_rows(layers, watch.statistics())
        self.rows += [{"epoch": epoch, **row, "recalibrated": False} for row in rows]
        return SampleFigures(loss, accuracy, *shift_summary(rows))

    def recalibrate(
        self, model: nn.Module, epoch: int, test: Loader, options: DeviceOptions
    ) -> Recalibrated | None:
        """Re-estimate BN's statistics with noise off (``train.recalibration``), from training
        images augmented as in training (or plain: ``train.diagnostics_images``), on a copy of
        ``model``; test it and measure its shift. The model itself is left as it is. None
        where the model has no BN layer."""
        if not bn_layers(model):
            return None
        model = copy.deepcopy(model)
        # batch mode's statistics depend on the batch size: that of training, as update_bn's
        loader = self._sample_loader(
            self.config.recalibration_sample, "train.recalibration_sample", self.config.batch_size
        )
        recalibrate_bn(model, Images(loader), mode=self.config.recalibration)
        test_loss, test_acc = evaluate(model, test, options)
        rows = self.measure(model)
        self.rows += [{"epoch": epoch, **row, "recalibrated": True} for row in rows]
        return Recalibrated(test_loss, test_acc, *shift_summary(rows))

    def load_state_dict(self, rows: list[dict[str, Any]]) -> None:
        """A checkpoint's rows (those of re-calibration are made again after resuming)."""
        self.rows = [row for row in rows if not row["recalibrated"]]

    def _sample_loader(
        self, size: int | None, what: str, batch_size: int, *, augment: bool | None = None
    ) -> DeviceLoader:
        """In a fixed order, the same on every pass: a class-balanced sample of the training
        set (all of it where ``size`` is None or not smaller), augmented once where
        ``augment`` (default: ``self.augmented``)."""
        split: Split = self.train
        if size is not None and size < len(split):
            split = balanced_subset(split, size, self.num_classes, what=what)
        if self.augmented if augment is None else augment:
            split = augmented_once(split, flip=self.flip)
        return DeviceLoader(
            split, batch_size=batch_size, device=self.device, train=False, stats=self.stats
        )
