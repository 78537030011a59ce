"""What each data set is (its layouts, class count, limits), and the uint8 splits every
reader returns."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnorder.core.errors import BnorderError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = 1  # bump when the cache file layout changes
# The most a file of each kind can be. A file past its limit is refused by name rather than
# read into memory whole.
LIMITS = {
    "32×32 image": 256 * 2**10,  # a few kB
    "image": 64 * 2**20,
    "CIFAR batch": 256 * 2**20,  # CIFAR-100's train file is 155 MB
    "SVHN .mat file": 512 * 2**20,  # train_32x32.mat is 182 MB
}
# The most the images of one data set may decode to, in bytes of uint8 (counted as RGB), and
# so the most a run holds of them in memory (twice that while they are stacked): refused up
# front, from the images' count and one header, rather than found out of memory. CIFAR-10
# decodes to 184 MB; 100,000 images at data.image_size 160 to 7.2 GiB.
DECODED_LIMIT = 8 * 2**30
# Image modes kept as one channel; every other mode is read as RGB.
GREY_MODES = {"1", "L", "I", "I;16", "F"}


class DataError(BnorderError, RuntimeError):
    """The data set is missing or malformed; the message says where and what to do."""


def error_reason(err: BaseException) -> str:
    """Why a reader failed, for a DataError: the message, or the type where it has none
    (MemoryError() says nothing)."""
    return str(err) or type(err).__name__


# Told how far decoding image files has got: (what is decoded, images done, images in all).
# Decoding 60,000 JPEGs takes a minute or two; a display shows it rather than a still screen.
DecodeProgress = Callable[[str, int, int], None]
decode_progress: contextvars.ContextVar[DecodeProgress | None] = contextvars.ContextVar(
    "decode_progress", default=None
)
DECODE_REPORT_EVERY = 500  # images


@contextlib.contextmanager
def reporting_decodes(report: DecodeProgress) -> Iterator[None]:
    """Within the block, image files decoded into the cache are counted to ``report``."""
    token = decode_progress.set(report)
    try:
        yield
    finally:
        decode_progress.reset(token)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of a training split, in [0, 1] units: what the
    loaders normalise by."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# CIFAR-10's, as published: kept rather than recomputed so that results stay bit-identical.
CIFAR10_STATS = ChannelStats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR10_MEAN, CIFAR10_STD = CIFAR10_STATS.mean, CIFAR10_STATS.std


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataShape:
    """What a network must fit: its inputs' channels and side, and the number of classes."""

    channels: int
    height: int
    width: int
    classes: int


@dataclass
class ImageData:
    """A whole data set as read (``read_data``), or a run's subsets of it (``data.load_data``)."""

    train: Split
    test: Split
    classes: list[str]
    source: str  # what was read, for run.json
    stats: ChannelStats  # of the whole training split
    # the subsets' positions in the whole splits (None: all of it), for the torchvision pipeline
    train_index: torch.Tensor | None = None
    test_index: torch.Tensor | None = None
    fingerprint: str = ""  # of the images, labels and classes a run gets (data.load_data)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Channels, height and width: what the model takes."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def shape(self) -> DataShape:
        """What a network for this data takes and puts out."""
        return DataShape(*self.image_shape, classes=len(self.classes))


def to_split(images: np.ndarray, labels: Iterable[int]) -> Split:
    """NHWC uint8 (as stored on disk) → an NCHW split."""
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return Split(tensor, torch.as_tensor(list(labels), dtype=torch.int64))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> ChannelStats:
    """Mean and standard deviation per channel over every pixel of N×C×H×W uint8 images,
    summed in float64 chunk by chunk (a float copy of a whole split would take gigabytes)."""
    channels = images.shape[1]
    total, squares = (
        torch.zeros(channels, dtype=torch.float64),
        torch.zeros(channels, dtype=torch.float64),
    )
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to(torch.float64) / 255
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = max(1, images.numel() // channels)
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt().clamp(min=1e-3)
    return ChannelStats(
        tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
    )


# ---------------------------------------------------------------- what each data set is


@dataclass(frozen=True)
class PickleLayout:
    """torchvision's pickled layout of a CIFAR data set: file names and the keys inside."""

    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels: str  # the key of the labels in a batch
    names: str  # the key of the class names in the meta file

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


@dataclass(frozen=True)
class Dataset:
    """One ``data.dataset``: its name in messages, its layouts, and what fetches it."""

    title: str
    pickles: PickleLayout | None = None
    mat_files: tuple[str, str] | None = None  # SVHN's (train, test)
    fixed_size: int | None = 32  # every image's side; None: any (data.image_size)
    channels: int | None = 3  # every image's; None: as the images are (greyscale or colour)
    download: Callable[[Path], None] | None = None
    classes: int | None = None  # how many; None: as many as the data has
    train_images: int | None = None  # in the training split; None: as many as the data has
    flip: bool = True  # mirrored at random in training (data.augment_flip unset)

    def layouts(self, *, tarball: bool = True) -> str:
        """The layouts looked for, in words, for a message (inside a tarball: ``tarball``
        False)."""
        found = []
        if self.pickles:
            found.append(f"{self.pickles.folder}/")
        if self.mat_files:
            found.append(" and ".join(self.mat_files))
        if not self.mat_files:
            found.append("train/ and test/ class folders")
        if not tarball:
            return " or ".join(found)
        return ", ".join(found) + ", or a .tar.gz of " + ("either" if len(found) > 1 else "them")


def _torchvision_download(name: str, splits: Iterable[dict[str, Any]]) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets

        for split in splits:
            getattr(torchvision.datasets, name)(str(root), download=True, **split)

    return download


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(
        "CIFAR-10",
        pickles=PickleLayout(
            "CIFAR-10",
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            ("test_batch",),
            "batches.meta",
            "labels",
            "label_names",
        ),
        download=_torchvision_download("CIFAR10", [{"train": True}]),
        classes=10,
        train_images=50_000,
    ),
    "cifar100": Dataset(
        "CIFAR-100",
        pickles=PickleLayout(
            "CIFAR-100",
            "cifar-100-python",
            ("train",),
            ("test",),
            "meta",
            "fine_labels",
            "fine_label_names",
        ),
        download=_torchvision_download("CIFAR100", [{"train": True}]),
        classes=100,
        train_images=50_000,
    ),
    "svhn": Dataset(
        "SVHN",
        mat_files=("train_32x32.mat", "test_32x32.mat"),
        download=_torchvision_download("SVHN", [{"split": "train"}, {"split": "test"}]),
        classes=10,
        train_images=73_257,
        flip=False,  # a mirrored 2 is no 2
    ),
    "folder": Dataset("the image-folder data set", fixed_size=None, channels=None),
}
PICKLE_FOLDER = DATASETS["cifar10"].pickles.folder  # type: ignore[union-attr]
