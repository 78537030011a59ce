"""Fake CIFAR-10 copies in the real on-disk layouts, made per test: no network, no real data."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL_TARBALL = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
)


def fake_images(
    per_class: int, seed: int, palette: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """NHWC uint8 images, class-major, each class with its own mean colour so nets can learn.
    ``palette``: draw the class colours from their own seed, so that splits made with other
    seeds share them (a test set that a trained net can score on)."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(palette) if palette is not None else rng
    images, labels = [], []
    for label in range(len(CLASSES)):
        base = colours.integers(0, 256, size=3)
        noise = rng.integers(-40, 41, size=(per_class, 32, 32, 3))
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        labels += [label] * per_class
    return np.concatenate(images), labels


def write_pickle_layout(root: Path, train_per_class: int = 10, test_per_class: int = 5) -> Path:
    """torchvision's cifar-10-batches-py: five training batches, a test batch and the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = fake_images(train_per_class, seed=1)
    test_x, test_y = fake_images(test_per_class, seed=2)

    def dump(name: str, images: np.ndarray, labels: list[int]) -> None:
        batch = {
            "batch_label": name,
            "labels": labels,
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "filenames": [f"{i}.png" for i in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(batch))

    order = np.random.default_rng(3).permutation(len(train_y))  # batches are shuffled, as in CIFAR
    for i, part in enumerate(np.array_split(order, 5), start=1):
        dump(f"data_batch_{i}", train_x[part], [train_y[j] for j in part])
    dump("test_batch", test_x, test_y)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return root


def write_folder_layout(
    root: Path,
    suffix: str = ".png",
    train_per_class: int = 10,
    test_per_class: int = 5,
    palette: int | None = None,
) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png, like the shared JPEG copy."""
    for split, per_class, seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        images, labels = fake_images(per_class, seed, palette)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / CLASSES[label] / f"{i:04d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


def tar_folder(folder: Path, tarball: Path, arcname: str) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return tarball


@pytest.fixture
def pickle_root(tmp_path: Path) -> Path:
    return write_pickle_layout(tmp_path / "cifar")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return write_folder_layout(tmp_path / "cifar-folders")


@pytest.fixture(autouse=True)
def _torch_threads():
    """train.threads sets torch's thread count for the whole process: give it back, so a
    later test's run sums in the same order as a fresh process's."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep decoded caches out of the user's home, and every test's apart."""
    path = tmp_path / "cache"
    monkeypatch.setenv("BNORDER_CACHE", str(path))
    return path


def tiny_config(tmp_path: Path, root: Path, **sections) -> Path:
    """A config that trains in a second or two on CPU; sections override whole keys."""
    config = {
        "data": {"root": str(root), "download": False},
        "model": {"widths": [4, 8], "convs_per_stage": 1, "hidden": [8], "dropout": 0.2},
        "schemes": {
            "bn_relu_drop": ["bn", "act", "dropout"],
            "relu_drop_bn": ["act", "dropout", "bn"],
            "bn_only": ["bn", "act"],
        },
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.5},
        "seeds": [0],
        "device": "cpu",
        "output": str(tmp_path / "results"),
    }
    for key, value in sections.items():
        if key in ("data", "model", "train"):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def invoke(*args: object, env: dict[str, str] | None = None):
    """``bnorder ARGS`` in this process, as a user would type it (paths become strings)."""
    from typer.testing import CliRunner

    from bnorder.cli.app import app

    # a wide terminal, so that table headers do not wrap mid-phrase
    return CliRunner().invoke(
        app, [str(arg) for arg in args], env={"COLUMNS": "200", **(env or {})}
    )


def interrupt_after(monkeypatch, epoch: int) -> None:
    """Ctrl-C arrives during the epoch after ``epoch``."""
    from bnorder.runs.train import Trainer

    original = Trainer.run_epoch

    def run_epoch(self, on_step=None):
        if self.epoch == epoch:
            raise KeyboardInterrupt
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def full_disk_writing(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """Make every fsync of a file whose path holds ``marker`` fail as a full disk does (the
    write itself succeeds, as on a real disk that fills at flush). Needs /proc."""
    import errno
    import os

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
