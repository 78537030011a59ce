"""Class-folder trees of images, on disk or in a tarball, decoded by the one reader every
command uses (``run``, ``audit --data``): regular files of bounded size only, the decoded
total bounded before anything is decoded, PIL's pixel limit kept."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bnorder.core.files import FileRefused, read_bounded, size_text
from bnorder.data.catalog import (
    DECODE_REPORT_EVERY,
    DECODED_LIMIT,
    GREY_MODES,
    IMAGE_SUFFIXES,
    LIMITS,
    DataError,
    Split,
    decode_progress,
    error_reason,
    to_split,
)

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
        raise DataError(f"{where}: cannot decode image ({error_reason(err)})") from None
    if sizing.exact and array.shape[:2] != (side, side):
        raise DataError(
            f"{where}: expected a {side}×{side} image, got {array.shape[1]}×{array.shape[0]}"
        )
    return array


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
        raise DataError(f"{where}: cannot decode image ({error_reason(err)})") from None


def check_decoded_total(
    count: int, size: tuple[int, int], where: str, sizing: Sizing, key: str = "data.image_size"
) -> None:
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
    check_decoded_total(len(entries), like[1] if like else (side, side), where, sizing, size_key)  # type: ignore[arg-type]
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


def class_names(files: dict[str, list[ImageEntry]], where: str) -> list[str]:
    """A class-folder tree's classes, as train/ names them. Raises DataError where there are
    none, only one, or test/ names others: ``run`` and ``validate`` say it alike."""
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
    classes = class_names(files, where)
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
