"""A run's data: the class-balanced subsets of a data set, and the loaders that batch them.

``datasets.py`` reads a data set from disk; this module cuts a run's subsets from it
(``load_data``) and batches them. Like airbench, the whole set lives on the device as uint8;
crop and flip run batched there (``DeviceLoader``), the crop's padding an eighth of the image
side. ``runs.runloop.make_loaders`` picks a run's loaders by ``data.pipeline``: those, or the
textbook pipeline of ``bnorder.data.textbook`` (CIFAR-10 only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from bnorder.data.catalog import DATASETS, ChannelStats, DataError, ImageData, Split
from bnorder.data.sources import read_data, split_sizes

if TYPE_CHECKING:
    from bnorder.data.options import DataConfig


def data_fingerprint(train: Split, test: Split, classes: list[str]) -> str:
    """A hash of exactly what runs train and test on: runs of one experiment must share it
    (the same config over other files is other data)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (train.images, train.labels, test.images, test.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update("\n".join(classes).encode())
    return digest.hexdigest()


def balanced_subset(split: Split, size: int | None, num_classes: int, *, what: str) -> Split:
    """A deterministic, class-balanced subset of ``size`` images (the first classes take the
    remainder); drawn with a fixed generator so that every run and seed sees the same images."""
    index = balanced_indices(split.labels, size, num_classes, what=what)
    return split if index is None else Split(split.images[index], split.labels[index])


def balanced_indices(
    labels: torch.Tensor, size: int | None, num_classes: int, *, what: str
) -> torch.Tensor | None:
    """The indices, in ascending order, of ``balanced_subset``; None for the whole split."""
    if size is None or size == len(labels):
        return None
    if size > len(labels):
        raise _too_many(what, size, len(labels))
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    labels = labels[order]
    chosen = []
    for cls in range(num_classes):
        want = size // num_classes + (1 if cls < size % num_classes else 0)
        members = order[labels == cls]
        if len(members) < want:
            raise DataError(
                f"{what}: {size} images need {want} of class {cls}, the split has {len(members)}"
            )
        chosen.append(members[:want])
    return torch.cat(chosen).sort().values


def _too_many(what: str, size: int, have: int) -> DataError:
    return DataError(f"{what}: asked for {size} images, the split has {have}")


def check_subsets(config: DataConfig) -> None:
    """That the subsets ``config`` asks for fit in its splits, where their sizes are known
    without decoding (``split_sizes``); else nothing is said here, and ``load_data`` says it.
    Raises DataError."""
    sizes = split_sizes(config)
    if sizes is None:
        return
    asked = (("data.train_subset", config.train_subset), ("data.test_subset", config.test_subset))
    for (what, size), have in zip(asked, sizes, strict=True):
        if size is not None and size > have:
            raise _too_many(what, size, have)


def load_data(config: DataConfig) -> ImageData:
    """The data a config names: ``config.dataset`` read from ``config.root`` (downloaded
    there where ``config.download`` and missing), cut to its class-balanced subsets."""
    data = read_data(
        config.root,
        config.dataset,
        download=config.download,
        cache_dir=config.cache_dir,
        image_size=config.image_size,
    )
    num_classes = len(data.classes)
    data.train_index = balanced_indices(
        data.train.labels, config.train_subset, num_classes, what="data.train_subset"
    )
    data.test_index = balanced_indices(
        data.test.labels, config.test_subset, num_classes, what="data.test_subset"
    )
    for name, index in (("train", data.train_index), ("test", data.test_index)):
        if index is not None:
            split = getattr(data, name)
            setattr(data, name, Split(split.images[index], split.labels[index]))
    data.fingerprint = data_fingerprint(data.train, data.test, data.classes)
    return data


# ---------------------------------------------------------------- device loader


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one run's epoch: its order first, then its crops and flips."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batch_count(n: int, batch_size: int, train: bool) -> int:
    if train and n > batch_size:
        return n // batch_size  # drop the ragged last batch: BN on tiny batches is noise
    return -(-n // batch_size)


class Loader(Protocol):
    """What a trainer iterates: DeviceLoader, and the textbook pipeline's TorchvisionLoader."""

    device: torch.device  # where its batches are
    labels: torch.Tensor  # every label, in the order of an evaluation pass

    def __len__(self) -> int: ...

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class DeviceLoader:
    """Batches from a uint8 split held on ``device``, normalised there by the data set's
    ``stats``. Training batches are cropped at random after padding by an eighth of the side
    (4 pixels at 32×32) and, where ``flip``, mirrored at random.

    All randomness (order, crop offsets, flips) comes from a CPU generator seeded by
    (seed, epoch), so a seed gives the same batches under every scheme and on every device.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device,
        train: bool,
        stats: ChannelStats,
        augment: bool = False,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device = batch_size, device
        self.train, self.augment, self.flip, self.seed = train, augment and train, flip, seed
        self.pad = max(1, split.images.shape[-1] // 8)
        shape = (1, len(stats.mean), 1, 1)
        self.mean = torch.tensor(stats.mean, device=device).view(shape) * 255
        self.std = torch.tensor(stats.std, device=device).view(shape) * 255

    def __len__(self) -> int:
        return batch_count(len(self.labels), self.batch_size, self.train)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if not self.train:
            for start in range(0, n, self.batch_size):
                yield (
                    self._normalise(self.images[start : start + self.batch_size]),
                    self.labels[start : start + self.batch_size],
                )
            return
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator)
        shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = (torch.rand(n, generator=generator) < 0.5) & self.flip  # drawn either way
        order, shifts, flips = (t.to(self.device) for t in (order, shifts, flips))
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                images = random_crop_flip(images, shifts[index], flips[index], self.pad)
            yield self._normalise(images), self.labels[index]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def random_crop_flip(
    images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Per-image random crop after zero padding by ``pad`` (offsets in ``shifts``, each in
    [0, 2·pad]), then a horizontal flip where ``flips``; batched, on the images' device."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = shifts[:, 0, None] + torch.arange(h, device=images.device)  # b×h
    cols = shifts[:, 1, None] + torch.arange(w, device=images.device)  # b×w
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def augmented_once(split: Split, *, flip: bool, seed: int = 0) -> Split:
    """The split with one random crop (and, where ``flip``, one random mirror) per image,
    drawn as training draws them but from a fixed generator: the same images on every call.
    BN's running statistics are learnt on augmented batches, so its diagnostics measure on
    images like these, and only dropout's part of the shift remains."""
    n, pad = len(split), max(1, split.images.shape[-1] // 8)
    generator = torch.Generator().manual_seed(seed)
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) & flip
    return Split(random_crop_flip(split.images, shifts, flips, pad), split.labels)


# ---------------------------------------------------------------- a run's loaders


def flips(config: DataConfig) -> bool:
    """Whether training images are mirrored at random: as the config says, else as suits the
    data set (not SVHN's digits)."""
    if config.augment_flip is not None:
        return config.augment_flip
    return DATASETS[config.dataset].flip
