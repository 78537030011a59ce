"""The file mechanisms every other module shares: a write that is never seen half done, a read
that is bounded, a lock between processes, and where decoded data is cached. One helper each,
used everywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from bnorder.core.errors import BnorderError, PathError


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this writer (many hosts may share the folder):
    where a file or folder is built before one rename makes it ``path``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it
    to ``path``: a reader (or a kill at any instant) sees the old file or the new one, never a
    mix. The folder is made where missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_sibling(path)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it the file
        os.replace(partial, path)
    except OSError as err:  # name the file meant, not the temporary one (or none)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        partial.unlink(missing_ok=True)  # gone after the rename; debris after an error


# what a place the user named says where it cannot take a file: bad input, not a fault
REFUSED_WRITES = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


@contextlib.contextmanager
def writing_to(place: Path, what: str) -> Iterator[None]:
    """Around writes to a place the user named (``--plots``, ``-o``): one that cannot take
    them (no permission, read-only, a file where a folder should be) is bad input, a
    PathError naming the path; any other OSError (a full disk) is not, and goes on as is."""
    try:
        yield
    except OSError as err:
        if err.errno not in REFUSED_WRITES:
            raise
        where = err.filename or place
        raise PathError(f"{where}: cannot write {what} there ({err.strerror})") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


class FileRefused(BnorderError, ValueError):
    """A file not read: not a regular file (a FIFO would block, a device never end), or larger
    than what its kind can be. The message names the path."""


# the most each kind of file bnorder reads back can be: far above what it writes, far below
# what would exhaust memory (a run.json and a config have theirs beside their readers)
CSV_BYTES = 32 * 2**20  # metrics.csv, variance_shift.csv: a few kB to a few MB
CHECKPOINT_BYTES = 4 * 2**30  # a run's model, optimizer and rows: MBs for the nets here
WEIGHTS_BYTES = 16 * 2**30  # --weights: any model audit may be given, the largest included


@contextlib.contextmanager
def open_bounded(path: Path, limit: int, kind: str) -> Iterator[IO[bytes]]:
    """``path`` open for reading where it is a regular file (a link to one is followed) of at
    most ``limit`` bytes, the most a ``kind`` can be; else FileRefused, raised before a byte
    is read. OSError as ``open`` raises. For readers that stream (``torch.load``): the size
    checked is the size on disk, which only a concurrent writer could change."""
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat could refuse it
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:  # checked on the descriptor, before Python's open refuses a folder in its own words
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path}: not a regular file (a {kind} must be one)")
        if info.st_size > limit:
            raise FileRefused(_too_large(path, limit, kind))
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as handle:
        yield handle


def read_bounded(path: Path, limit: int, kind: str) -> bytes:
    """The bytes of ``path``, as ``open_bounded`` allows it; else FileRefused or OSError."""
    with open_bounded(path, limit, kind) as handle:
        data = handle.read(limit + 1)  # the size may have changed since fstat
    if len(data) > limit:
        raise FileRefused(_too_large(path, limit, kind))
    return data


def hash_into(digest: Any, path: Path, limit: int | None, kind: str) -> None:
    """Feed the bytes of ``path`` to ``digest`` (hashlib's ``update``), 1 MiB at a time, as
    ``open_bounded`` allows it (``limit`` None: any size); else FileRefused. OSError as
    ``open`` raises. Memory stays bounded whatever the file's size."""
    with open_bounded(path, sys.maxsize if limit is None else limit, kind) as handle:
        while chunk := handle.read(2**20):
            digest.update(chunk)


def _too_large(path: Path, limit: int, kind: str) -> str:
    return f"{path}: larger than {size_text(limit)}, the most a {kind} can be"


def size_text(n: int) -> str:
    """A size in bytes for a message: 64 MiB, 97.7 KiB, 8 GiB (three figures at most)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 2**10:.3g} KiB"


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive OS lock (flock) on ``path``; yields whether this process got it.

    ``wait``: block until the lock is free (then always True); else give up at once where
    another process holds it. A process killed with -9 never leaves it stuck. Where locks are
    not to be had (Windows, a file system without flock such as some NFS or Lustre), it goes
    on unlocked and yields True.
    """
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir(configured: str | Path | None = None) -> Path:
    """Where decoded data sets are kept: ``data.cache_dir`` where set, else $BNORDER_CACHE,
    else ~/.cache/bnorder."""
    if configured:
        return Path(configured).expanduser()
    # set but empty is unset: not the current folder
    return Path(os.environ.get("BNORDER_CACHE") or Path.home() / ".cache" / "bnorder")
