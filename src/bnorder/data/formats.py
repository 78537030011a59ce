"""The on-disk forms of a data set, each read into uint8 splits without running code from
the files: CIFAR pickles, SVHN's .mat files, class-folder trees of images and tarballs of
any of them."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import pickle
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bnorder.core.files import FileRefused, read_bounded, size_text
from bnorder.data.catalog import (
    DECODE_REPORT_EVERY,
    DECODED_LIMIT,
    GREY_MODES,
    IMAGE_SUFFIXES,
    LIMITS,
    DataError,
    Dataset,
    PickleLayout,
    Split,
    decode_progress,
)


def to_split(images: np.ndarray, labels: Iterable[int]) -> Split:
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


def from_pickles(
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
        return to_split(np.concatenate(images).transpose(0, 2, 3, 1), labels)

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
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{where}: X of shape {images.shape} and type {images.dtype}, not 32×32×3×N uint8"
        )
    digits = _checked_labels(_svhn_digits(labels, where), images.shape[3], 10, where)
    return to_split(images.transpose(3, 0, 1, 2), digits)


def _svhn_digits(labels: np.ndarray, where: str) -> list[int]:
    """SVHN's labels 1 to 10 as the digits 0 to 9: whole numbers only (a float label such as
    1.5 would otherwise be truncated to a class it never was, a NaN be a traceback)."""
    if labels.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels of type {labels.dtype}, not numbers")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            raise DataError(f"{where}: label {labels[~whole][0]:g} is not a whole number")
    outside = labels[(labels < 1) | (labels > 10)]
    if len(outside):
        raise DataError(f"{where}: label {int(outside[0])} outside SVHN's 1 to 10")
    return [int(label) % 10 for label in labels]


def from_mats(
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


@dataclass(frozen=True)
class Stored:
    """An image file inside a stream (a tarball member), read only when it is decoded.
    Images are decoded in the order of ``position``: a gzip stream read backwards starts
    over from its beginning."""

    read: Callable[[], bytes]
    position: int


# An image file where it lies: a path, a tarball member, or bytes already read.
ImageSource = Path | Stored | bytes
# (the image's name in messages, below the data set's place; where it lies)
ImageEntry = tuple[str, ImageSource]


def _raw(source: ImageSource, kind: str) -> bytes:
    if isinstance(source, Path):
        return read_file(source, kind)
    return source.read() if isinstance(source, Stored) else source


# the first image's name and its width and height: what every image kept as it is must be
Like = tuple[str, tuple[int, int]]


def _decode(raw: bytes, where: str, sizing: Sizing, like: Like | None = None) -> np.ndarray:
    """One image as H×W (greyscale) or H×W×3 uint8, sized as ``sizing`` says; where ``like``,
    refused from its header, before it is decoded, unless it is the first image's size."""
    try:
        with Image.open(io.BytesIO(raw)) as image:  # the header only, so far
            if like is not None and image.size != like[1]:
                _unlike(where, image.size, like)
            image = image.convert("L" if image.mode in GREY_MODES else "RGB")
            side = sizing.size
            if side is not None and image.size != (side, side) and not sizing.exact:
                image = ImageOps.fit(image, (side, side), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as err:  # MemoryError() says nothing: its type does
        raise DataError(f"{where}: cannot decode image ({_reason(err)})") from None
    if sizing.exact and array.shape[:2] != (side, side):
        raise DataError(
            f"{where}: expected a {side}×{side} image, got {array.shape[1]}×{array.shape[0]}"
        )
    return array


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _unlike(where: str, size: tuple[int, int], like: Like) -> None:
    raise DataError(
        f"{where}: {size[0]}×{size[1]}, where {like[0]} is {like[1][0]}×{like[1][1]}: "
        "set data.image_size to resize them all"  # only where data.image_size is unset
    )


def _header_size(raw: bytes, where: str) -> tuple[int, int]:
    """An image's width and height from its header, nothing decoded."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except Exception as err:
        raise DataError(f"{where}: cannot decode image ({_reason(err)})") from None


def _check_total(count: int, size: tuple[int, int], where: str, sizing: Sizing, key: str) -> None:
    """Refuse, before any image is decoded, a set that would decode past DECODED_LIMIT
    (counted as RGB: one colour image makes every image so); ``key`` sets the size."""
    total = count * size[0] * size[1] * 3
    if total <= DECODED_LIMIT:
        return
    fix = f"set {key}" if sizing.size is None else f"a smaller {key}"
    raise DataError(
        f"{where}: {count:,} images of {size[0]}×{size[1]} decode to {size_text(total)}, more "
        f"than the {size_text(DECODED_LIMIT)} bnorder decodes: {fix}, or fewer images"
    )


def decode_images(
    entries: list[ImageEntry], where: str, sizing: Sizing, size_key: str = "data.image_size"
) -> list[np.ndarray]:
    """The images of ``entries``, decoded in turn (streams in their order) and returned in
    the entries' order; their total checked against DECODED_LIMIT first (``size_key``: what
    sets their size, for the message), and, where they are kept as they are, each one's size
    against the first's before it is decoded. DataError naming the image, and why."""
    if not entries:
        return []
    order = sorted(range(len(entries)), key=lambda i: _position(entries[i][1]))
    first = entries[order[0]]
    raw = _raw(first[1], sizing.kind)
    side, like = sizing.size, None
    if side is None:
        like = (first[0], _header_size(raw, f"{where}/{first[0]}"))
    _check_total(len(entries), like[1] if like else (side, side), where, sizing, size_key)  # type: ignore[arg-type]
    report = decode_progress.get() or (lambda what, done, total: None)
    decoded: list[np.ndarray | None] = [None] * len(entries)
    for done, i in enumerate(order, start=1):
        name, source = entries[i]
        raw = raw if done == 1 else _raw(source, sizing.kind)
        decoded[i] = _decode(raw, f"{where}/{name}", sizing, like)
        if done % DECODE_REPORT_EVERY == 0 or done == len(entries):
            report(where, done, len(entries))
    return decoded  # type: ignore[return-value]


def _position(source: ImageSource) -> int:
    return source.position if isinstance(source, Stored) else 0


def stack_images(arrays: list[np.ndarray], rgb: bool) -> np.ndarray:
    """N×H×W×C from decoded images of one size; greyscale ones repeated to RGB where ``rgb``."""
    shaped = [
        (np.repeat(a[..., None], 3, axis=2) if rgb else a[..., None]) if a.ndim == 2 else a
        for a in arrays
    ]
    return np.stack(shaped)


def _classes(files: dict[str, list[ImageEntry]], where: str) -> list[str]:
    byto_split: dict[str, set[str]] = {"train": set(), "test": set()}
    for key in files:
        split, cls = key.split("/")
        byto_split[split].add(cls)
    classes = sorted(byto_split["train"])
    if not classes:
        raise DataError(f"{where}: no images under train/<class>/")
    if len(classes) < 2:  # one class trains to 100 %: a result that tells nothing apart
        raise DataError(
            f"{where}: 1 class ({classes[0]}) under train/: at least 2 are needed to classify"
        )
    if sorted(byto_split["test"]) != classes:
        raise DataError(
            f"{where}: test/ classes {sorted(byto_split['test'])} differ from "
            f"train/ classes {classes}"
        )
    return classes


def from_folders(
    files: dict[str, list[ImageEntry]], where: str, sizing: Sizing
) -> tuple[Split, Split, list[str]]:
    """Splits from ``{"train/<class>": [(name, source)], "test/<class>": ...}``."""
    classes = _classes(files, where)
    entries: dict[str, list[ImageEntry]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for label, cls in enumerate(classes):
            found = sorted(files[f"{split}/{cls}"], key=lambda item: item[0])
            entries[split] += [(f"{split}/{cls}/{name}", source) for name, source in found]
            labels[split] += [label] * len(found)
    images = decode_images(entries["train"] + entries["test"], where, sizing)
    # one colour image anywhere makes every image RGB: a model takes one channel count
    rgb = any(a.ndim == 3 for a in images)
    cut = len(entries["train"])
    train = to_split(stack_images(images[:cut], rgb), labels["train"])
    test = to_split(stack_images(images[cut:], rgb), labels["test"])
    return train, test, classes


def class_files(folder: Path) -> dict[str, list[ImageEntry]]:
    """The image files of each class folder below ``folder``, by class name."""
    found: dict[str, list[ImageEntry]] = {}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = [(p.name, p) for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            found[class_dir.name] = images  # type: ignore[assignment]
    return found


def folder_files(root: Path) -> dict[str, list[ImageEntry]]:
    return {
        f"{split}/{cls}": images
        for split in ("train", "test")
        for cls, images in class_files(root / split).items()
    }


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Around a read of a data file: a file refused (not regular, too large) or unreadable is
    a DataError naming it."""
    try:
        yield
    except FileRefused as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def read_file(path: Path, kind: str) -> bytes:
    """A data file's bytes: a regular file of at most the size its ``kind`` can be."""
    with reading(path):
        return read_bounded(path, LIMITS[kind], kind)


# ---------------------------------------------------------------- tarballs


def _fits(member: tarfile.TarInfo, kind: str, path: Path) -> tarfile.TarInfo:
    """``member``, refused from its header where it is larger than a ``kind`` can be."""
    if member.size > LIMITS[kind]:
        raise DataError(
            f"{path}: member {member.name} is {member.size:,} bytes, more than a {kind} can be"
        )
    return member


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, kind: str, path: Path) -> bytes:
    """A tarball member's bytes, refused before reading where it is larger than a ``kind``."""
    return tar.extractfile(_fits(member, kind, path)).read()


def check_member(member: tarfile.TarInfo, tarball: Path) -> None:
    """Refuse, for every pipeline, a member whose path is absolute or climbs out with ``..``:
    extracted, it would land outside the folder given (DataError)."""
    if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
        raise DataError(f"{tarball}: refusing member {member.name!r} (it leaves the folder)")


@dataclass
class _TarContents:
    named: dict[str, bytes]  # pickled batches or .mat files, by file name
    images: dict[str, dict[str, Stored]]  # "train/<class>" → file name → where it lies


def _tar_contents(tar: tarfile.TarFile, path: Path, dataset: Dataset, kind: str) -> _TarContents:
    """The members a data set can use, found by name whatever the top-level folder, in one
    pass over the stream: batches and .mat files read, images left where they lie (decoded
    later, one at a time, so that memory holds one member's bytes, not all of them). A
    member stored twice counts once, as extracting keeps the last."""
    wanted = {
        **dict.fromkeys(dataset.pickles.files if dataset.pickles else (), "CIFAR batch"),
        **dict.fromkeys(dataset.mat_files or (), "SVHN .mat file"),
    }
    contents = _TarContents({}, {})
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
            read = functools.partial(_member, tar, _fits(member, kind, path), kind, path)
            stored = Stored(read, member.offset_data)
            contents.images.setdefault(f"{parts[-3]}/{parts[-2]}", {})[parts[-1]] = stored
    return contents


def read_tarball(path: Path, dataset: Dataset, sizing: Sizing) -> tuple[Split, Split, list[str]]:
    try:
        with tarfile.open(path) as tar:  # open while its images are decoded
            contents = _tar_contents(tar, path, dataset, sizing.kind)
            if dataset.pickles and set(dataset.pickles.files) <= contents.named.keys():
                return from_pickles(contents.named, dataset.pickles, str(path))
            if dataset.mat_files and set(dataset.mat_files) <= contents.named.keys():
                return from_mats(contents.named, dataset, str(path))
            if contents.images and not dataset.mat_files:
                images = {k: list(v.items()) for k, v in contents.images.items()}
                return from_folders(images, str(path), sizing)  # type: ignore[arg-type]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read tarball ({err})") from None
    raise DataError(f"{path}: holds no {dataset.layouts(tarball=False)} of {dataset.title}")
