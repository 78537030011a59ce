"""The data sets bnorder trains on, read from their usual on-disk forms into uint8 splits.

``data.dataset`` names one; ``data.root`` holds it in one of its layouts:

* ``cifar10``: torchvision's ``cifar-10-batches-py/`` pickles (or ``root`` itself), a
  ``train/<class>/ test/<class>/`` tree of 32×32 images, or a ``.tar.gz`` of either.
* ``cifar100``: ``cifar-100-python/`` pickles (its 100 fine labels), a class-folder tree, or a
  ``.tar.gz`` of either.
* ``svhn``: torchvision's ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 is the digit 0,
  as torchvision reads it), or a ``.tar.gz`` holding them.
* ``folder``: a class-folder tree of images of any size and any number of classes, or a
  ``.tar.gz`` of one. ``data.image_size`` resizes the shorter side and crops the centre.

Pickles and ``.mat`` files are read directly, not through torchvision's dataset classes, whose
md5 check rejects any copy that is not byte-identical to the original download. Image files are
decoded once into a uint8 cache file (``data.cache_dir``), with the training split's
per-channel statistics beside them. ``download: true`` has torchvision fetch the original.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import math
import os
import pickle
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bnorder.core.files import FileRefused, atomic_write, file_lock, read_bounded
from bnorder.core.files import cache_dir as cache_folder

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
# Image modes kept as one channel; every other mode is read as RGB.
GREY_MODES = {"1", "L", "I", "I;16", "F"}


class DataError(RuntimeError):
    """The data set is missing or malformed; the message says where and what to do."""


# Told how far decoding image files has got: (what is decoded, images done, images in all).
# Decoding 60,000 JPEGs takes a minute or two; a display shows it rather than a still screen.
DecodeProgress = Callable[[str, int, int], None]
_decode_progress: contextvars.ContextVar[DecodeProgress | None] = contextvars.ContextVar(
    "decode_progress", default=None
)
DECODE_REPORT_EVERY = 500  # images


@contextlib.contextmanager
def reporting_decodes(report: DecodeProgress) -> Iterator[None]:
    """Within the block, image files decoded into the cache are counted to ``report``."""
    token = _decode_progress.set(report)
    try:
        yield
    finally:
        _decode_progress.reset(token)


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
    "folder": Dataset("the image-folder data set", fixed_size=None),
}
PICKLE_FOLDER = DATASETS["cifar10"].pickles.folder  # type: ignore[union-attr]


def _split(images: np.ndarray, labels: Iterable[int]) -> Split:
    """NHWC uint8 (as stored on disk) → an NCHW split."""
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return Split(tensor, torch.as_tensor(list(labels), dtype=torch.int64))


# ---------------------------------------------------------------- CIFAR pickles

# What a CIFAR python batch holds besides containers, strings and numbers: numpy arrays (as
# numpy 1 and 2 pickle them, protocols 2 to 5) and, in protocol-2 pickles of bytes,
# codecs.encode. Nothing here runs code of the file's choosing.
PICKLE_GLOBALS = {
    *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: a pickle that names any other callable (the
    way a crafted file runs code) is refused by that name, before anything is called."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        found = super().find_class(module, name)
        return _empty_only(found) if name == "_reconstruct" else found


def _empty_only(reconstruct: Callable[..., Any]) -> Callable[..., Any]:
    """numpy's ``_reconstruct`` as pickles of real arrays call it: for an empty array, which
    the pickle's own bytes then fill. Called with any other shape, it would allocate memory
    the file never pays for (a 157-byte pickle, a 3 GiB array)."""

    def empty_only(subtype: Any, shape: Any, dtype: Any) -> Any:
        if not isinstance(shape, tuple) or math.prod(shape) != 0:
            raise pickle.UnpicklingError(f"refused an array of shape {shape!r} without data")
        return reconstruct(subtype, shape, dtype)

    return empty_only


def _unpickle(raw: bytes, where: str, title: str = "CIFAR-10") -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:
        raise DataError(f"{where}: not a {title} python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a {title} python batch (a {type(batch).__name__})")
    return batch


def _batch(
    batch: dict, where: str, layout: PickleLayout, classes: int
) -> tuple[np.ndarray, list[int]]:
    """One batch's images (N×3×32×32 uint8) and labels, checked: a batch of another shape or
    with labels outside the classes is a DataError here, not an IndexError mid-training."""
    try:
        data = np.asarray(batch["data"])
        labels = [int(label) for label in batch[layout.labels]]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: not a {layout.title} python batch ({err})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{where}: data of shape {data.shape} and type {data.dtype}, not N×3072 uint8"
        )
    return data.reshape(-1, 3, 32, 32), _checked_labels(labels, len(data), classes, where)


def _checked_labels(labels: list[int], images: int, classes: int, where: str) -> list[int]:
    if len(labels) != images:
        raise DataError(f"{where}: {len(labels)} labels for {images} images")
    wrong = [label for label in labels if not 0 <= label < classes]
    if wrong:
        raise DataError(f"{where}: label {wrong[0]} outside the {classes} classes")
    return labels


def _from_pickles(
    read: dict[str, bytes], layout: PickleLayout, where: str
) -> tuple[Split, Split, list[str]]:
    """Splits from the raw bytes of torchvision's pickled files, keyed by file name."""
    meta = _unpickle(read[layout.meta], f"{where}/{layout.meta}", layout.title)
    try:
        classes = [str(name) for name in meta[layout.names]]
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}/{layout.meta}: no list of {layout.names} ({err})") from None

    def load(names: tuple[str, ...]) -> Split:
        images, labels = [], []
        for name in names:
            batch = _unpickle(read[name], f"{where}/{name}", layout.title)
            data, batch_labels = _batch(batch, f"{where}/{name}", layout, len(classes))
            images.append(data)
            labels.extend(batch_labels)
        return _split(np.concatenate(images).transpose(0, 2, 3, 1), labels)

    return load(layout.train), load(layout.test), classes


# ---------------------------------------------------------------- SVHN's .mat files


def _from_mat(raw: bytes, where: str) -> Split:
    """One SVHN split: ``X`` is 32×32×3×N uint8, ``y`` N×1 with the digit 0 labelled 10."""
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(raw), variable_names=["X", "y"])
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except Exception as err:
        raise DataError(f"{where}: not an SVHN .mat file ({err})") from None
    if images.dtype != np.uint8 or images.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{where}: X of shape {images.shape} and type {images.dtype}, not 32×32×3×N uint8"
        )
    wrong = [int(label) for label in labels if not 1 <= int(label) <= 10]
    if wrong:
        raise DataError(f"{where}: label {wrong[0]} outside SVHN's 1 to 10")
    digits = _checked_labels([int(label) % 10 for label in labels], images.shape[3], 10, where)
    return _split(images.transpose(3, 0, 1, 2), digits)


def _from_mats(
    read: dict[str, bytes], dataset: Dataset, where: str
) -> tuple[Split, Split, list[str]]:
    train_file, test_file = dataset.mat_files  # type: ignore[misc]
    train = _from_mat(read[train_file], f"{where}/{train_file}")
    test = _from_mat(read[test_file], f"{where}/{test_file}")
    return train, test, [str(digit) for digit in range(10)]


# ---------------------------------------------------------------- class-folder trees


@dataclass(frozen=True)
class Sizing:
    """How images become one size: resized to ``size`` (shorter side, then the centre cropped
    square), or, where ``exact``, refused unless ``size``×``size`` already (CIFAR, SVHN)."""

    size: int | None = None  # None: as they are, all alike
    exact: bool = False

    @property
    def kind(self) -> str:
        """What an image file is, for its size limit."""
        return "32×32 image" if self.exact and self.size == 32 else "image"


def _decode(raw: bytes, where: str, sizing: Sizing) -> np.ndarray:
    """One image as H×W (greyscale) or H×W×3 uint8, sized as ``sizing`` says."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image = image.convert("L" if image.mode in GREY_MODES else "RGB")
            side = sizing.size
            if side is not None and image.size != (side, side) and not sizing.exact:
                image = ImageOps.fit(image, (side, side), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Exception as err:
        raise DataError(f"{where}: cannot decode image ({err})") from None
    if sizing.exact and array.shape[:2] != (side, side):
        raise DataError(
            f"{where}: expected a {side}×{side} image, got {array.shape[1]}×{array.shape[0]}"
        )
    return array


def _stack(arrays: list[np.ndarray], names: list[str], where: str, rgb: bool) -> np.ndarray:
    """N×H×W×C from images of one size; greyscale ones repeated to RGB where ``rgb``."""
    first = arrays[0].shape[:2]
    for array, name in zip(arrays, names, strict=True):
        if array.shape[:2] != first:
            raise DataError(
                f"{where}/{name}: {array.shape[1]}×{array.shape[0]}, where "
                f"{names[0]} is {first[1]}×{first[0]}: set data.image_size to resize them all"
            )
    shaped = [
        (np.repeat(a[..., None], 3, axis=2) if rgb else a[..., None]) if a.ndim == 2 else a
        for a in arrays
    ]
    return np.stack(shaped)


def _classes(files: dict[str, list[tuple[str, bytes | Path]]], where: str) -> list[str]:
    by_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for key in files:
        split, cls = key.split("/")
        by_split[split].add(cls)
    classes = sorted(by_split["train"])
    if not classes:
        raise DataError(f"{where}: no images under train/<class>/")
    if sorted(by_split["test"]) != classes:
        raise DataError(
            f"{where}: test/ classes {sorted(by_split['test'])} differ from "
            f"train/ classes {classes}"
        )
    return classes


def _from_folders(
    files: dict[str, list[tuple[str, bytes | Path]]], where: str, sizing: Sizing
) -> tuple[Split, Split, list[str]]:
    """Splits from ``{"train/<class>": [(name, bytes or path)], "test/<class>": ...}``."""
    classes = _classes(files, where)

    decoded: dict[str, tuple[list[np.ndarray], list[int], list[str]]] = {}
    report = _decode_progress.get() or (lambda what, done, total: None)
    total, done = sum(len(found) for found in files.values()), 0
    for split in ("train", "test"):
        images, labels, names = decoded.setdefault(split, ([], [], []))
        for label, cls in enumerate(classes):
            for name, content in sorted(files[f"{split}/{cls}"], key=lambda item: item[0]):
                raw = _read(content, sizing.kind) if isinstance(content, Path) else content
                names.append(f"{split}/{cls}/{name}")
                images.append(_decode(raw, f"{where}/{names[-1]}", sizing))
                labels.append(label)
                done += 1
                if done % DECODE_REPORT_EVERY == 0 or done == total:
                    report(where, done, total)
    # one colour image anywhere makes every image RGB: a model takes one channel count
    rgb = any(a.ndim == 3 for images, _, _ in decoded.values() for a in images)
    train, test = (
        _split(_stack(images, names, where, rgb), labels)
        for images, labels, names in decoded.values()
    )
    if train.images.shape[2:] != test.images.shape[2:]:
        raise DataError(
            f"{where}: test/ images are {test.images.shape[3]}×{test.images.shape[2]}, train/ "
            f"images {train.images.shape[3]}×{train.images.shape[2]}: set data.image_size"
        )
    return train, test, classes


def _folder_files(root: Path) -> dict[str, list[tuple[str, bytes | Path]]]:
    files: dict[str, list[tuple[str, bytes | Path]]] = {}
    for split in ("train", "test"):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            images = [
                (p.name, p) for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
            ]
            if images:
                files[f"{split}/{class_dir.name}"] = images
    return files


def _read(path: Path, kind: str) -> bytes:
    """A data file's bytes: a regular file of at most the size its ``kind`` can be."""
    try:
        return read_bounded(path, LIMITS[kind], kind)
    except FileRefused as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


# ---------------------------------------------------------------- tarballs


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, kind: str, path: Path) -> bytes:
    """A tarball member's bytes, refused before reading where it is larger than a ``kind``."""
    if member.size > LIMITS[kind]:
        raise DataError(
            f"{path}: member {member.name} is {member.size:,} bytes, more than a {kind} can be"
        )
    return tar.extractfile(member).read()


def check_member(member: tarfile.TarInfo, tarball: Path) -> None:
    """Refuse, for every pipeline, a member whose path is absolute or climbs out with ``..``:
    extracted, it would land outside the folder given (DataError)."""
    if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
        raise DataError(f"{tarball}: refusing member {member.name!r} (it leaves the folder)")


@dataclass
class _TarContents:
    named: dict[str, bytes]  # pickled batches or .mat files, by file name
    images: dict[str, dict[str, bytes]]  # "train/<class>" → file name → bytes


def _tar_contents(path: Path, dataset: Dataset, image_kind: str) -> _TarContents:
    """The members a data set can use, found by name whatever the top-level folder; a member
    stored twice counts once, as extracting keeps the last."""
    wanted = {
        **dict.fromkeys(dataset.pickles.files if dataset.pickles else (), "CIFAR batch"),
        **dict.fromkeys(dataset.mat_files or (), "SVHN .mat file"),
    }
    contents = _TarContents({}, {})
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                check_member(member, path)
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if parts[-1] in wanted:
                    contents.named[parts[-1]] = _member(tar, member, wanted[parts[-1]], path)
                elif (
                    len(parts) >= 3
                    and parts[-3] in ("train", "test")
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES)
                ):
                    raw = _member(tar, member, image_kind, path)
                    contents.images.setdefault(f"{parts[-3]}/{parts[-2]}", {})[parts[-1]] = raw
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read tarball ({err})") from None
    return contents


def _read_tarball(path: Path, dataset: Dataset, sizing: Sizing) -> tuple[Split, Split, list[str]]:
    contents = _tar_contents(path, dataset, sizing.kind)
    if dataset.pickles and set(dataset.pickles.files) <= contents.named.keys():
        return _from_pickles(contents.named, dataset.pickles, str(path))
    if dataset.mat_files and set(dataset.mat_files) <= contents.named.keys():
        return _from_mats(contents.named, dataset, str(path))
    if contents.images and not dataset.mat_files:
        images = {k: list(v.items()) for k, v in contents.images.items()}
        return _from_folders(images, str(path), sizing)
    raise DataError(f"{path}: holds no {dataset.layouts(tarball=False)} of {dataset.title}")


# ---------------------------------------------------------------- the decode-once cache


def cache_path(source: Path, cache_dir: Path, variant: str = "") -> Path:
    """The cache file of a tarball, or of a folder tree: named after what identifies its
    content (path; each file's path below it, size and modification time), so that a changed
    source, or a file moved between splits or classes, is decoded anew. ``variant``: how it
    is decoded (the data set, the image size), where not CIFAR-10's as it is."""
    if source.is_file():
        stat = source.stat()
        content = f"{stat.st_size}:{stat.st_mtime_ns}"
    else:  # one stat per file: ~1 s for 60k files on a local disk
        files = []
        for class_dir in sorted(p for p in source.glob("*/*") if p.is_dir()):
            with os.scandir(class_dir) as entries:
                for entry in entries:
                    if entry.name.lower().endswith(IMAGE_SUFFIXES):
                        stat = entry.stat()
                        where = class_dir.relative_to(source).as_posix()  # split/class
                        files.append((where, entry.name, stat.st_size, stat.st_mtime_ns))
        content = hashlib.sha256(repr(sorted(files)).encode()).hexdigest()
    key = f"{CACHE_FORMAT}:{source.resolve()}:{content}" + (f":{variant}" if variant else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{source.name.split('.')[0]}-{digest}.npz"


Decoded = tuple[Split, Split, list[str], ChannelStats | None]


def _load_cache(cache: Path) -> Decoded | None:
    try:
        with np.load(cache) as npz:
            stats = None
            if "mean" in npz:  # caches written before statistics were kept have none
                stats = ChannelStats(tuple(npz["mean"].tolist()), tuple(npz["std"].tolist()))
            return (
                _split(npz["train_x"], npz["train_y"].tolist()),
                _split(npz["test_x"], npz["test_y"].tolist()),
                [str(c) for c in npz["classes"]],
                stats,
            )
    except Exception:
        cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
        return None


def _cached(cache: Path, decode: Callable[[], tuple[Split, Split, list[str]]]) -> Decoded:
    """Decode a tarball or a folder of image files once; later runs load the uint8 arrays
    and the training split's statistics (the source may be read-only, so the cache lives in
    the cache folder)."""
    if cache.exists():
        found = _load_cache(cache)
        if found is not None:
            return found
    train, test, classes = decode()
    stats = channel_stats(train.images)

    def write(handle: IO[bytes]) -> None:
        np.savez(
            handle,
            train_x=train.images.permute(0, 2, 3, 1).numpy(),
            train_y=train.labels.numpy(),
            test_x=test.images.permute(0, 2, 3, 1).numpy(),
            test_y=test.labels.numpy(),
            classes=np.array(classes),
            mean=np.array(stats.mean),
            std=np.array(stats.std),
        )

    # no writable cache: decode again next time, still correct
    with contextlib.suppress(OSError):
        atomic_write(cache, write)  # a reader never sees half a cache
    return train, test, classes, stats


# ---------------------------------------------------------------- entry points


def missing_data(root: Path, dataset: str = "cifar10") -> DataError:
    kind = DATASETS[dataset]
    fetch = (
        "Either set data.download: true on a machine with network access, or point data.root"
        if kind.download
        else "Point data.root"
    )
    return DataError(
        f"{kind.title} not found at {root} (looked for {kind.layouts()}). {fetch} at a local "
        "copy in one of those layouts."
    )


def locate_data(root: str | Path, dataset: str = "cifar10") -> tuple[str, Path] | None:
    """Which layout of ``dataset`` lies at ``root``, without reading it: ("tarball", file),
    ("batches", folder), ("mat", folder) or ("folders", root); None where there is none."""
    root, kind = Path(root).expanduser(), DATASETS[dataset]
    if root.is_file():
        return "tarball", root
    if kind.pickles:
        for folder in (root / kind.pickles.folder, root):
            if (folder / kind.pickles.meta).is_file():
                return "batches", folder
    if kind.mat_files:
        return ("mat", root) if (root / kind.mat_files[0]).is_file() else None
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folders", root
    return None


def class_count(root: str | Path, dataset: str) -> int | None:
    """How many classes ``dataset`` at ``root`` has, without decoding it: fixed for CIFAR and
    SVHN, the class folders of a folder tree; None where only reading it would tell."""
    known = DATASETS[dataset].classes
    if known is not None:
        return known
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        return None
    return sum(1 for p in train.iterdir() if p.is_dir()) or None


def _download(root: Path, dataset: str) -> None:
    kind = DATASETS[dataset]
    if kind.download is None:
        raise missing_data(root, dataset)
    try:
        with file_lock(root / ".download.lock", wait=True):  # shards and Ray tasks share one root
            if locate_data(root, dataset) is None:  # else another process fetched it meanwhile
                kind.download(root)
    except Exception as err:
        raise DataError(
            f"downloading {kind.title} into {root} failed ({err}). Point data.root at a local "
            f"copy: {kind.layouts()}."
        ) from None


def _read_files(layout: str, path: Path, kind: Dataset) -> tuple[Split, Split, list[str]]:
    """The splits of an uncached layout: pickled batches or .mat files, read directly."""
    names = kind.pickles.files if layout == "batches" else kind.mat_files  # type: ignore[union-attr]
    missing = [n for n in names if not (path / n).exists()]
    if missing:
        raise DataError(f"{path}: missing {kind.title} files {missing}")
    if layout == "batches":
        read = {n: _read(path / n, "CIFAR batch") for n in names}
        return _from_pickles(read, kind.pickles, str(path))  # type: ignore[arg-type]
    return _from_mats({n: _read(path / n, "SVHN .mat file") for n in names}, kind, str(path))


def read_data(
    root: str | Path,
    dataset: str = "cifar10",
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
) -> ImageData:
    """The whole of ``dataset`` from ``root``, in any layout the module docstring lists."""
    root, kind = Path(root).expanduser(), DATASETS[dataset]
    found = locate_data(root, dataset)
    if found is None:
        if not download:
            raise missing_data(root, dataset)
        _download(root, dataset)
        return read_data(root, dataset, cache_dir=cache_dir, image_size=image_size)
    layout, path = found
    sizing = Sizing(image_size) if kind.fixed_size is None else Sizing(kind.fixed_size, exact=True)
    if layout in ("batches", "mat"):
        train, test, classes = _read_files(layout, path, kind)
        stats = None
    else:
        # CIFAR-10 keeps its cache names of before other data sets were read
        variant = "" if dataset == "cifar10" else f"{dataset}:{sizing.size}"
        decode = (
            (lambda: _read_tarball(path, kind, sizing))
            if layout == "tarball"
            else (lambda: _from_folders(_folder_files(path), str(path), sizing))
        )
        train, test, classes, stats = _cached(
            cache_path(path, cache_folder(cache_dir), variant), decode
        )
    if dataset == "cifar10":
        stats = CIFAR10_STATS
    return ImageData(train, test, classes, str(root), stats or channel_stats(train.images))


def read_cifar10(
    root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None
) -> ImageData:
    """``read_data`` for CIFAR-10."""
    return read_data(root, "cifar10", download=download, cache_dir=cache_dir)
