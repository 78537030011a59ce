"""CIFAR-10 from any of its usual on-disk forms, class-balanced subsets, and a run's loaders.

Sources, tried in this order under ``root``:
  * torchvision's layout: ``root/cifar-10-batches-py/`` (or ``root`` itself) with the pickled
    batches. Read directly rather than through ``torchvision.datasets.CIFAR10``, whose md5 check
    rejects any copy that is not byte-identical to the original download.
  * a class-folder tree: ``root/train/<class>/*.png|jpg`` and ``root/test/<class>/...``.
  * a ``.tar.gz`` of either layout.
A tarball or folder tree is decoded once into a uint8 cache file (``data.cache_dir``).
  * ``download: true``: torchvision downloads the original into ``root``.

Like airbench, the whole set lives on the device as uint8; crop and flip run batched there
(``DeviceLoader``). ``make_loaders`` picks a run's loaders by ``data.pipeline``: those, or
the textbook pipeline of ``bnorder.textbook``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import pickle
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bnorder.files import FileRefused, atomic_write, file_lock, read_bounded
from bnorder.files import cache_dir as cache_folder

if TYPE_CHECKING:
    from bnorder.config import DataConfig, TrainConfig

# CIFAR-10's per-channel statistics of the training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PICKLE_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CACHE_FORMAT = 1  # bump when the cache file layout changes
# The most a file of each kind can be: a 32×32 image is a few kB, a CIFAR batch about 30 MB.
# A file past its limit is refused by name rather than read into memory whole.
LIMITS = {"32×32 image": 256 * 2**10, "CIFAR-10 batch": 64 * 2**20}


class DataError(RuntimeError):
    """The data set is missing or malformed; the message says where and what to do."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×3×32×32
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Cifar10:
    train: Split
    test: Split
    classes: list[str]
    source: str  # what was read, for run.json
    # the subsets' positions in the whole splits (None: all of it), for the torchvision pipeline
    train_index: torch.Tensor | None = None
    test_index: torch.Tensor | None = None
    fingerprint: str = ""  # of the images, labels and classes a run gets (load_cifar10)


def data_fingerprint(train: Split, test: Split, classes: list[str]) -> str:
    """A hash of exactly what runs train and test on: runs of one experiment must share it
    (the same config over other files is other data)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (train.images, train.labels, test.images, test.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update("\n".join(classes).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- readers


def _split(images: np.ndarray, labels: Iterable[int]) -> Split:
    """NHWC uint8 (as stored on disk) → an NCHW split."""
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return Split(tensor, torch.as_tensor(list(labels), dtype=torch.int64))


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


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:
        raise DataError(f"{where}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR-10 python batch (a {type(batch).__name__})")
    return batch


def _batch(batch: dict, where: str, classes: int) -> tuple[np.ndarray, list[int]]:
    """One batch's images (N×3×32×32 uint8) and labels, checked: a batch of another shape or
    with labels outside the classes is a DataError here, not an IndexError mid-training."""
    try:
        data = np.asarray(batch["data"])
        labels = [int(label) for label in batch.get("labels", batch.get("fine_labels", []))]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: not a CIFAR-10 python batch ({err})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{where}: data of shape {data.shape} and type {data.dtype}, not N×3072 uint8"
        )
    if len(labels) != len(data):
        raise DataError(f"{where}: {len(labels)} labels for {len(data)} images")
    wrong = [label for label in labels if not 0 <= label < classes]
    if wrong:
        raise DataError(f"{where}: label {wrong[0]} outside the {classes} classes")
    return data.reshape(-1, 3, 32, 32), labels


def _from_batches(read: dict[str, bytes], where: str) -> tuple[Split, Split, list[str]]:
    """Splits from the raw bytes of torchvision's pickled batch files, keyed by file name."""
    try:
        classes = [
            str(name)
            for name in _unpickle(read["batches.meta"], f"{where}/batches.meta")["label_names"]
        ]
    except (KeyError, TypeError) as err:
        raise DataError(f"{where}/batches.meta: no list of label_names ({err})") from None

    def load(names: list[str]) -> Split:
        images, labels = [], []
        for name in names:
            batch = _unpickle(read[name], f"{where}/{name}")
            data, batch_labels = _batch(batch, f"{where}/{name}", len(classes))
            images.append(data)
            labels.extend(batch_labels)
        return _split(np.concatenate(images).transpose(0, 2, 3, 1), labels)

    return load(TRAIN_BATCHES), load(["test_batch"]), classes


def _decode(raw: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:
        raise DataError(f"{where}: cannot decode image ({err})") from None
    if array.shape != (32, 32, 3):
        raise DataError(f"{where}: expected a 32×32 image, got {array.shape[1]}×{array.shape[0]}")
    return array


def _from_folders(
    files: dict[str, list[tuple[str, bytes | Path]]], where: str
) -> tuple[Split, Split, list[str]]:
    """Splits from ``{"train/<class>": [(name, bytes or path)], "test/<class>": ...}``."""
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

    def load(split: str) -> Split:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for name, content in sorted(files[f"{split}/{cls}"], key=lambda item: item[0]):
                raw = _read(content, "32×32 image") if isinstance(content, Path) else content
                images.append(_decode(raw, f"{where}/{split}/{cls}/{name}"))
                labels.append(label)
        return _split(np.stack(images), labels)

    return load("train"), load("test"), classes


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


def _read_folder_tree(root: Path) -> tuple[Split, Split, list[str]]:
    return _from_folders(_folder_files(root), str(root))


def _read(path: Path, kind: str) -> bytes:
    """A data file's bytes: a regular file of at most the size its ``kind`` can be."""
    try:
        return read_bounded(path, LIMITS[kind], kind)
    except FileRefused as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


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


def _read_tarball(path: Path) -> tuple[Split, Split, list[str]]:
    """Either layout inside a tarball, found by member names whatever the top-level folder; a
    member stored twice counts once, as extracting keeps the last."""
    batches: dict[str, bytes] = {}
    files: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                check_member(member, path)
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if parts[-1] in (*TRAIN_BATCHES, "test_batch", "batches.meta"):
                    batches[parts[-1]] = _member(tar, member, "CIFAR-10 batch", path)
                elif (
                    len(parts) >= 3
                    and parts[-3] in ("train", "test")
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES)
                ):
                    key, raw = f"{parts[-3]}/{parts[-2]}", _member(tar, member, "32×32 image", path)
                    files.setdefault(key, {})[parts[-1]] = raw
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read tarball ({err})") from None
    if len(batches) == 7:
        return _from_batches(batches, str(path))
    if files:
        return _from_folders({k: list(v.items()) for k, v in files.items()}, str(path))
    raise DataError(
        f"{path}: holds neither {PICKLE_FOLDER}/ batches nor train/ test/ class folders"
    )


# ---------------------------------------------------------------- cache for tarballs


def cache_path(source: Path, cache_dir: Path) -> Path:
    """The cache file of a tarball, or of a folder tree: named after what identifies its
    content (path; each file's path below it, size and modification time), so that a changed
    source, or a file moved between splits or classes, is decoded anew."""
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
    key = f"{CACHE_FORMAT}:{source.resolve()}:{content}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{source.name.split('.')[0]}-{digest}.npz"


def _cached(
    source: Path, cache_dir: Path, decode: Callable[[], tuple[Split, Split, list[str]]]
) -> tuple[Split, Split, list[str]]:
    """Decode a tarball or a folder of image files once; later runs load the uint8 arrays
    (the source may be read-only, so the cache lives in ``cache_dir``)."""
    cache = cache_path(source, cache_dir)
    if cache.exists():
        try:
            with np.load(cache) as npz:
                return (
                    _split(npz["train_x"], npz["train_y"].tolist()),
                    _split(npz["test_x"], npz["test_y"].tolist()),
                    [str(c) for c in npz["classes"]],
                )
        except Exception:
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    train, test, classes = decode()

    def write(handle: IO[bytes]) -> None:
        np.savez(
            handle,
            train_x=train.images.permute(0, 2, 3, 1).numpy(),
            train_y=train.labels.numpy(),
            test_x=test.images.permute(0, 2, 3, 1).numpy(),
            test_y=test.labels.numpy(),
            classes=np.array(classes),
        )

    # no writable cache: decode again next time, still correct
    with contextlib.suppress(OSError):
        atomic_write(cache, write)  # a reader never sees half a cache
    return train, test, classes


# ---------------------------------------------------------------- entry point


def missing_data(root: Path) -> DataError:
    return DataError(
        f"CIFAR-10 not found at {root} (looked for {PICKLE_FOLDER}/, train/ and test/ class "
        "folders, or a .tar.gz of either). Either set data.download: true on a machine with "
        "network access, or point data.root at a local copy in one of those layouts."
    )


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    try:
        with file_lock(root / ".download.lock", wait=True):  # shards and Ray tasks share one root
            if locate_cifar10(root) is None:  # else another process fetched it meanwhile
                CIFAR10(str(root), train=True, download=True)
    except Exception as err:
        raise DataError(
            f"downloading CIFAR-10 into {root} failed ({err}). Point data.root at "
            "a local copy: torchvision's cifar-10-batches-py folder, a train/ test/ "
            "class-folder tree, or a .tar.gz of either."
        ) from None


def locate_cifar10(root: str | Path) -> tuple[str, Path] | None:
    """Which layout lies at ``root``, without reading it: ("tarball", file), ("batches",
    folder) or ("folders", root); None where there is none."""
    root = Path(root).expanduser()
    if root.is_file():
        return "tarball", root
    for folder in (root / PICKLE_FOLDER, root):
        if (folder / "batches.meta").is_file():
            return "batches", folder
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folders", root
    return None


def read_cifar10(
    root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None
) -> Cifar10:
    """The whole of CIFAR-10 from ``root``, in any layout the module docstring lists."""
    root = Path(root).expanduser()
    found = locate_cifar10(root)
    if found is None:
        if not download:
            raise missing_data(root)
        _download(root)
        return read_cifar10(root, download=False, cache_dir=cache_dir)
    layout, path = found
    cache = cache_folder(cache_dir)
    if layout == "tarball":
        train, test, classes = _cached(path, cache, partial(_read_tarball, path))
    elif layout == "batches":
        names = [*TRAIN_BATCHES, "test_batch", "batches.meta"]
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise DataError(f"{path}: missing batch files {missing}")
        read = {n: _read(path / n, "CIFAR-10 batch") for n in names}
        train, test, classes = _from_batches(read, str(path))
    else:
        train, test, classes = _cached(path, cache, partial(_read_folder_tree, path))
    return Cifar10(train, test, classes, source=str(root))


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
        raise DataError(f"{what}: asked for {size} images, the split has {len(labels)}")
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


def load_cifar10(config: DataConfig) -> Cifar10:
    """The data a config names: read from ``config.root`` (downloaded there where
    ``config.download`` and missing), cut to its class-balanced subsets."""
    data = read_cifar10(config.root, download=config.download, cache_dir=config.cache_dir)
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
    """Batches from a uint8 split held on ``device``, normalised there.

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
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device = batch_size, device
        self.train, self.augment, self.seed = train, augment and train, seed
        self.mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1) * 255

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
        shifts = torch.randint(0, 9, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        order, shifts, flips = (t.to(self.device) for t in (order, shifts, flips))
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                images = random_crop_flip(images, shifts[index], flips[index])
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


# ---------------------------------------------------------------- a run's loaders


def make_loaders(
    data: Cifar10,
    config: DataConfig,
    train_config: TrainConfig,
    *,
    seed: int,
    device: torch.device,
) -> tuple[Loader, Loader]:
    """A run's (train, test) loaders, of the pipeline ``config.pipeline`` names: the
    device-resident DeviceLoader ("device"), or the textbook TorchvisionLoader
    ("torchvision"), which reads the same files through a torchvision dataset."""

    def device_loader(train: bool, split: Split, index: torch.Tensor | None) -> Loader:
        # the split is the subset already; the index is the textbook pipeline's
        batch_size = train_config.batch_size if train else train_config.eval_batch_size
        return DeviceLoader(
            split, batch_size=batch_size, device=device, train=train,
            augment=train_config.augment, seed=seed,
        )  # fmt: skip

    def textbook_loader(train: bool, split: Split, index: torch.Tensor | None) -> Loader:
        # imported here: only this pipeline needs torchvision, which is slow to import
        from bnorder.textbook import TorchvisionLoader, torchvision_dataset

        return TorchvisionLoader(
            torchvision_dataset(config.root, train=train, cache_dir=config.cache_dir),
            split.labels,
            index=index,
            batch_size=train_config.batch_size if train else train_config.eval_batch_size,
            device=device,
            train=train,
            augment=train_config.augment,
            seed=seed,
            workers=config.workers,
        )

    make = textbook_loader if config.pipeline == "torchvision" else device_loader
    return make(True, data.train, data.train_index), make(False, data.test, data.test_index)
