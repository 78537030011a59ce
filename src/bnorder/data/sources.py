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
import hashlib
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image

from bnorder.core.files import atomic_write, file_lock, hash_into
from bnorder.core.files import cache_dir as cache_folder
from bnorder.data.catalog import (
    CACHE_FORMAT,
    CIFAR10_STATS,
    DATASETS,
    GREY_MODES,
    IMAGE_SUFFIXES,
    LIMITS,
    ChannelStats,
    DataError,
    Dataset,
    DataShape,
    ImageData,
    Split,
    channel_stats,
    to_split,
)
from bnorder.data.formats import from_mats, from_pickles, read_tarball
from bnorder.data.images import (
    Sizing,
    check_decoded_total,
    class_names,
    folder_files,
    from_folders,
    read_file,
    reading,
)

if TYPE_CHECKING:
    from bnorder.data.options import DataConfig

# ---------------------------------------------------------------- the decode-once cache


def cache_path(source: Path, cache_dir: Path, variant: str = "") -> Path:
    """The cache file of a tarball, or of a folder tree: named after its content (the
    tarball's bytes; each image file's path below the root and bytes), so that a source
    changed in any way, even to the same sizes and times (``cp -p`` keeps them, tar rounds
    sizes to blocks), or a file moved between splits or classes, is decoded anew. Hashing
    reads every byte once: ~0.3 s for CIFAR-10's 170 MB. ``variant``: how it is decoded (the
    data set, the image size), where not CIFAR-10's as it is."""
    key = f"{CACHE_FORMAT}:{source.resolve()}:{_content_digest(source)}"
    key += f":{variant}" if variant else ""
    return (
        cache_dir
        / f"{source.name.split('.')[0]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    )


# one process asks several times (plan, validate, the first run's data): each file is read
# once, while its stat (inode, size, times, the ctime no copy can set) stays the same
_DIGESTS: dict[tuple[object, ...], str] = {}


def _content_digest(source: Path) -> str:
    """The sha256 of a tarball's bytes, or of a folder tree's image paths and bytes."""
    files = [("", source)] if source.is_file() else _image_files(source)
    with reading(source):
        stats = [(name, path.stat()) for name, path in files]
    signature = (str(source.resolve()), *(
        (name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for name, st in stats
    ))  # fmt: skip
    if signature not in _DIGESTS:
        digest = hashlib.sha256()
        for name, path in files:
            with reading(path):  # a FIFO is refused here, before anything waits on it
                if name:
                    digest.update(f"\0{name}\0".encode())
                    hash_into(digest, path, LIMITS["image"], "image")
                else:
                    hash_into(digest, path, None, "tarball")
        _DIGESTS[signature] = digest.hexdigest()
    return _DIGESTS[signature]


def _image_files(source: Path) -> list[tuple[str, Path]]:
    """A folder tree's image files, as (split/class/name, path), in a fixed order."""
    files = []
    for class_dir in sorted(p for p in source.glob("*/*") if p.is_dir()):
        where = class_dir.relative_to(source).as_posix()  # split/class
        names = sorted(e.name for e in os.scandir(class_dir))
        files += [
            (f"{where}/{n}", class_dir / n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)
        ]
    return files


def _sizing(kind: Dataset, image_size: int | None) -> Sizing:
    """How ``kind``'s images are sized: its fixed side, exactly, or ``data.image_size``."""
    return Sizing(image_size) if kind.fixed_size is None else Sizing(kind.fixed_size, exact=True)


def _cache_file(source: Path, dataset: str, sizing: Sizing, cache_dir: str | Path | None) -> Path:
    # CIFAR-10 keeps its cache names of before other data sets were read
    variant = "" if dataset == "cifar10" else f"{dataset}:{sizing.size}"
    return cache_path(source, cache_folder(cache_dir), variant)


Decoded = tuple[Split, Split, list[str], ChannelStats | None]


def _load_cache(cache: Path) -> Decoded | None:
    try:
        with np.load(cache) as npz:
            stats = None
            if "mean" in npz:  # caches written before statistics were kept have none
                stats = ChannelStats(tuple(npz["mean"].tolist()), tuple(npz["std"].tolist()))
            return (
                to_split(npz["train_x"], npz["train_y"].tolist()),
                to_split(npz["test_x"], npz["test_y"].tolist()),
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


# how a newcomer names a local copy without editing the config
LOCAL_COPY = "data.root at a local copy (in the config, or --set data.root=PATH)"


def missing_data(root: Path, dataset: str = "cifar10") -> DataError:
    kind = DATASETS[dataset]
    fetch = (
        f"Either set data.download: true on a machine with network access, or point {LOCAL_COPY}"
        if kind.download
        else f"Point {LOCAL_COPY}"
    )
    return DataError(
        f"{kind.title} not found at {root} (looked for {kind.layouts()}). {fetch}, in one of "
        "those layouts."
    )


def _download_lock(root: Path) -> Path:
    """The lock shards and Ray tasks take to download into ``root``: in the cache folder, so
    that a download that fails (offline) leaves nothing in the user's tree."""
    name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_folder() / "locks" / f"download-{name}.lock"


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


def data_shape(config: DataConfig) -> DataShape | None:
    """The shape of the data ``config`` names, found cheaply, with nothing decoded: fixed for
    CIFAR and SVHN; a folder data set's from its decoded cache where there is one, else from
    its class folders and its images' headers. None where it cannot be known so (no data
    here, or a tarball never decoded)."""
    kind = DATASETS[config.dataset]
    if kind.channels is not None and kind.fixed_size is not None and kind.classes is not None:
        return DataShape(kind.channels, kind.fixed_size, kind.fixed_size, kind.classes)
    found = locate_data(config.root, config.dataset)
    if found is None or found[0] not in ("tarball", "folders"):
        return None
    layout, path = found
    sizing = _sizing(kind, config.image_size)
    cached = _cached_shape(_cache_file(path, config.dataset, sizing, config.cache_dir))
    if cached is not None or layout == "tarball":
        return cached
    return _folder_shape(path, sizing)


def split_sizes(config: DataConfig) -> tuple[int, int] | None:
    """How many images the training and test splits of the data ``config`` names hold, found
    cheaply, with nothing decoded: from the decoded cache where there is one, else a folder
    tree's image files counted. None where it cannot be known so (pickles and .mat files are
    read whole to count them; a tarball never decoded; no data here)."""
    found = locate_data(config.root, config.dataset)
    if found is None or found[0] not in ("tarball", "folders"):
        return None
    layout, path = found
    sizing = _sizing(DATASETS[config.dataset], config.image_size)
    with contextlib.suppress(Exception):  # damaged, of another layout: read_data decodes anew
        cache = _cache_file(path, config.dataset, sizing, config.cache_dir)
        return _array_shape(cache, "train_x.npy")[0], _array_shape(cache, "test_x.npy")[0]
    if layout == "tarball":
        return None
    try:
        files = folder_files(path)
    except OSError:  # an unreadable class folder: read_data names it
        return None
    count = {
        split: sum(len(v) for k, v in files.items() if k.startswith(split))
        for split in ("train/", "test/")
    }
    return count["train/"], count["test/"]


def _array_shape(cache: Path, name: str) -> tuple[int, ...]:
    """The shape of the array ``name`` in the cache file, from its header alone."""
    with zipfile.ZipFile(cache) as archive, archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        return tuple(read_header(member)[0])


def _cached_shape(cache: Path) -> DataShape | None:
    """A decoded cache's shape, from its arrays' headers; None where there is none, or it
    cannot be read (``read_data`` then decodes anew)."""
    try:
        _, height, width, channels = _array_shape(cache, "train_x.npy")  # N×H×W×C
        with np.load(cache) as npz:  # the class names only
            classes = len(npz["classes"])
    except Exception:  # absent, damaged, or of another layout
        return None
    return DataShape(int(channels), int(height), int(width), classes)


def _folder_shape(root: Path, sizing: Sizing) -> DataShape | None:
    """A class-folder tree's shape from its folders and its images' headers, as
    ``from_folders`` will decode it: one channel only where every image is greyscale, and
    ``sizing.size`` square (else the first image's size). None where it has no readable image.
    DataError where ``run`` would refuse it before decoding (one class, too much to decode)."""
    files = folder_files(root)
    paths = [path for found in files.values() for _, path in found]
    if not paths:
        return None
    classes = len(class_names(files, str(root)))
    try:
        with warnings.catch_warnings():  # headers only: the decoded total is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(paths[0]) as first:  # the header only: nothing decoded
                width, height = first.size
            grey = all(_is_grey(path) for path in paths)  # stops at the first colour image
    except Exception:  # read_data will say which image, and why
        return None
    side = sizing.size
    check_decoded_total(len(paths), (side, side) if side else (width, height), str(root), sizing)
    return DataShape(1 if grey else 3, side or height, side or width, classes)


def _is_grey(path: Path | bytes) -> bool:
    with Image.open(path) as image:  # type: ignore[arg-type]
        return image.mode in GREY_MODES


def _download(root: Path, dataset: str) -> None:
    kind = DATASETS[dataset]
    if kind.download is None:
        raise missing_data(root, dataset)
    try:
        with file_lock(_download_lock(root), wait=True):  # shards and Ray tasks share one root
            if locate_data(root, dataset) is None:  # else another process fetched it meanwhile
                kind.download(root)
    except Exception as err:
        raise DataError(
            f"downloading {kind.title} into {root} failed ({err}). Point {LOCAL_COPY}: "
            f"{kind.layouts()}."
        ) from None


def _read_files(layout: str, path: Path, kind: Dataset) -> tuple[Split, Split, list[str]]:
    """The splits of an uncached layout: pickled batches or .mat files, read directly."""
    names = kind.pickles.files if layout == "batches" else kind.mat_files  # type: ignore[union-attr]
    missing = [n for n in names if not (path / n).exists()]
    if missing:
        raise DataError(f"{path}: missing {kind.title} files {missing}")
    if layout == "batches":
        read = {n: read_file(path / n, "CIFAR batch") for n in names}
        return from_pickles(read, kind.pickles, str(path))  # type: ignore[arg-type]
    return from_mats({n: read_file(path / n, "SVHN .mat file") for n in names}, kind, str(path))


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
    sizing = _sizing(kind, image_size)
    if layout in ("batches", "mat"):
        train, test, classes = _read_files(layout, path, kind)
        stats = None
    else:
        decode = (
            (lambda: read_tarball(path, kind, sizing))
            if layout == "tarball"
            else (lambda: from_folders(folder_files(path), str(path), sizing))
        )
        train, test, classes, stats = _cached(_cache_file(path, dataset, sizing, cache_dir), decode)
    if dataset == "cifar10":
        stats = CIFAR10_STATS
    return ImageData(train, test, classes, str(root), stats or channel_stats(train.images))


def read_cifar10(
    root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None
) -> ImageData:
    """``read_data`` for CIFAR-10."""
    return read_data(root, "cifar10", download=download, cache_dir=cache_dir)
