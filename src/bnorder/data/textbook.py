"""The textbook pipeline, the reference the device loader is held to: what a textbook
training loop uses, a torchvision dataset (CIFAR10 over torchvision's batches, ImageFolder over
a class-folder tree, a tarball extracted once into the cache) with PIL transforms, batched by a
DataLoader with worker processes. Used by ``data.pipeline: torchvision`` (through
``bnorder.runs.runloop.make_loaders``) and by benchmarks/throughput.py."""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision import transforms
from torchvision.datasets import CIFAR10, ImageFolder

from bnorder.core.files import cache_dir as cache_folder
from bnorder.core.files import temporary_sibling
from bnorder.data.catalog import CIFAR10_MEAN, CIFAR10_STD, PICKLE_FOLDER, DataError
from bnorder.data.formats import check_member
from bnorder.data.loaders import batch_count, epoch_generator
from bnorder.data.sources import cache_path, locate_data, missing_data


def _extracted(tarball: Path, cache_dir: Path) -> Path:
    """A tarball's files, extracted once into the cache (for datasets that read files)."""
    target = cache_path(tarball, cache_dir).with_suffix(".files")
    if not target.is_dir():
        partial = temporary_sibling(target)
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(partial, members=_plain_members(tar, tarball))
            os.replace(partial, target)
        except (tarfile.TarError, OSError) as err:
            if not target.is_dir():  # else another process extracted it meanwhile: use that
                raise DataError(f"{tarball}: cannot extract into {cache_dir} ({err})") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    for folder in [target, *sorted(p for p in target.rglob("*") if p.is_dir())]:
        found = locate_data(folder)
        if found is not None:
            return found[1]
    raise DataError(f"{tarball}: holds neither {PICKLE_FOLDER}/ batches nor train/ test/ folders")


def _plain_members(tar: tarfile.TarFile, tarball: Path) -> list[tarfile.TarInfo]:
    """Folders and regular files that stay inside the target (no links, devices, absolute or
    ``..`` paths): what extractall's "data" filter allows, on every Python version."""
    members = []
    for member in tar.getmembers():
        check_member(member, tarball)
        if member.isfile() or member.isdir():
            members.append(member)
    return members


def torchvision_dataset(
    root: str | Path, *, train: bool, cache_dir: str | Path | None = None
) -> torch.utils.data.Dataset:
    """The split ``datasets.read_data`` reads, as the torchvision dataset a textbook loop would use,
    which decodes one image at a time: ImageFolder over a class-folder tree, CIFAR10 over
    torchvision's batches. A tarball is extracted once into the cache folder."""
    found = locate_data(root)
    if found is None:
        raise missing_data(Path(root))
    layout, path = found
    if layout == "tarball":
        path = _extracted(path, cache_folder(cache_dir))
        layout = "batches" if (path / "batches.meta").is_file() else "folders"
    if layout == "folders":
        return ImageFolder(str(path / ("train" if train else "test")))
    if path.name != PICKLE_FOLDER:
        raise DataError(f"{path}: torchvision's CIFAR10 reads batches only from {PICKLE_FOLDER}/")
    try:
        return CIFAR10(str(path.parent), train=train)
    except RuntimeError as err:  # its md5 check: a copy that is not the original download
        raise DataError(f"{path}: torchvision's CIFAR10 refuses it ({err})") from None


class TorchvisionLoader:
    """The textbook pipeline, as a reference for the device loader and for benchmarks: a
    torchvision dataset with PIL transforms (random crop with 4-pixel padding, flip, ToTensor,
    Normalize), batched by a DataLoader with worker processes. The same interface as
    DeviceLoader, and the same order of images for a (seed, epoch); crops and flips come from
    torchvision's transforms, so they differ. Workers are seeded from the epoch's generator, so
    a run is reproducible for a given number of workers."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        labels: torch.Tensor,
        *,
        index: torch.Tensor | None,
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: bool = False,
        seed: int = 0,
        workers: int = 2,
    ) -> None:
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        dataset.transform = transforms.Compose(
            [
                *(steps if augment and train else []),
                transforms.ToTensor(),
                transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )
        targets = torch.as_tensor(dataset.targets)
        if index is not None:
            targets, dataset = targets[index], torch.utils.data.Subset(dataset, index.tolist())
        if not torch.equal(targets, labels.cpu()):
            raise DataError(
                "the torchvision dataset's labels differ from those read from the same files"
            )
        self.dataset, self.labels = dataset, labels.to(device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.seed, self.workers = seed, workers

    def __len__(self) -> int:
        return batch_count(len(self.labels), self.batch_size, self.train)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.seed, epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        size = self.batch_size
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[order[b * size : (b + 1) * size].tolist() for b in range(len(self))],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,  # the workers' seeds: reproducible augmentation
        )
        batches = iter(loader)
        seeds = torch.randint(2**62, (len(self),), generator=generator).tolist()
        for seed in seeds:
            # without workers, the transforms run here and would draw from the global RNG that
            # dropout draws from: give them their own stream instead
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                images, labels = next(batches)
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )
