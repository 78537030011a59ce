"""The on-disk forms of a data set, each read into uint8 splits without running code from
the files: CIFAR pickles, SVHN's .mat files, class-folder trees of images and tarballs of
any of them."""

from __future__ import annotations

import functools
import io
import math
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bnorder.core.files import size_text
from bnorder.data.catalog import (
    IMAGE_SUFFIXES,
    LIMITS,
    DataError,
    Dataset,
    PickleLayout,
    Split,
    error_reason,
    to_split,
)
from bnorder.data.images import Sizing, Stored, from_folders

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

    _check_inflated(raw, where)
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


def _check_inflated(raw: bytes, where: str) -> None:
    """Refuse, from the variables' headers, a .mat file whose X and y would inflate past what
    an SVHN file can be (a compressed file is small on disk: 3.8 MB can hold 4 GB)."""
    from scipy.io import whosmat

    try:
        found = whosmat(io.BytesIO(raw))
    except Exception as err:
        raise DataError(f"{where}: not an SVHN .mat file ({error_reason(err)})") from None
    limit = LIMITS["SVHN .mat file"]
    wanted = [(shape, kind) for name, shape, kind in found if name in ("X", "y")]
    total = sum(math.prod(shape) * _item_size(kind) for shape, kind in wanted)
    if total > limit:
        raise DataError(
            f"{where}: its X and y inflate to {size_text(total)}, more than the "
            f"{size_text(limit)} an SVHN .mat file can hold"
        )


def _item_size(kind: str) -> int:
    """Bytes per value of a MATLAB class (8 where it is no numpy type: cells, structs)."""
    try:
        return np.dtype(kind).itemsize
    except TypeError:
        return 8


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
