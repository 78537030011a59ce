"""The ``data:`` section of a config: which images, how many, read how."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bnorder.core.schema import Strict


class DataConfig(Strict):
    dataset: Literal["cifar10", "cifar100", "svhn", "folder"] = "cifar10"
    root: str = "data/cifar10"
    download: bool = False
    train_subset: int | None = Field(default=None, gt=0)
    test_subset: int | None = Field(default=None, gt=0)
    cache_dir: str | None = None  # where tarballs are decoded once; None: ~/.cache/bnorder
    # device: the whole set on the device as uint8, augmented there in batches (fast);
    # torchvision: the textbook DataLoader with PIL transforms (a reference, and slower)
    pipeline: Literal["device", "torchvision"] = "device"
    workers: int = Field(default=2, ge=0)  # torchvision pipeline: DataLoader worker processes
    # folder: the side images are resized (shorter side) and centre-cropped to; None: as they
    # are, all of one size
    image_size: int | None = Field(default=None, ge=8, le=1024)
    # false where a mirror image is another class (digits); None: the data set's (svhn: false)
    augment_flip: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _root_by_dataset(cls, value: Any) -> Any:
        if isinstance(value, dict) and "root" not in value:  # data/cifar100, data/svhn, …
            return {**value, "root": f"data/{value.get('dataset', 'cifar10')}"}
        return value

    @model_validator(mode="after")
    def _fits_the_dataset(self) -> DataConfig:
        if self.image_size is not None and self.dataset != "folder":
            raise ValueError(
                f"image_size: only for dataset folder ({self.dataset}'s images are 32×32)"
            )
        if self.pipeline == "torchvision" and self.dataset != "cifar10":
            raise ValueError(f"pipeline: torchvision reads cifar10 only, not {self.dataset}")
        if self.pipeline == "torchvision" and self.augment_flip is False:
            raise ValueError("augment_flip: false needs pipeline: device (torchvision's flips)")
        if self.download and self.dataset == "folder":
            raise ValueError("download: a folder data set is not downloaded; set it false")
        return self
