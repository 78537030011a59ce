"""The ``data:`` section of a config: which images, how many, read how."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from bnorder.core.schema import AddedLater, NotIdentity, Strict


class DataConfig(Strict):
    dataset: Literal["cifar10", "cifar100", "svhn", "folder"] = "cifar10"
    root: Annotated[str, NotIdentity("where the data lies")] = "data/cifar10"
    download: Annotated[bool, NotIdentity("whether it may be fetched")] = False
    train_subset: int | None = Field(default=None, gt=0)
    test_subset: int | None = Field(default=None, gt=0)
    cache_dir: Annotated[str | None, NotIdentity("where it is cached")] = (
        None  # where tarballs are decoded once; None: ~/.cache/bnorder
    )
    # device: the whole set on the device as uint8, augmented there in batches (fast);
    # torchvision: the textbook DataLoader with PIL transforms (a reference, and slower)
    pipeline: Literal["device", "torchvision"] = "device"
    workers: int = Field(default=2, ge=0)  # torchvision pipeline: DataLoader worker processes
    # folder: the side images are resized (shorter side) and centre-cropped to; None: as they
    # are, all of one size
    image_size: Annotated[int | None, AddedLater(None)] = Field(default=None, ge=8, le=1024)
    # false where a mirror image is another class (digits); None: the data set's (svhn: false)
    # earlier versions always flipped; None is resolved to the data set's choice first
    augment_flip: Annotated[bool | None, AddedLater(True)] = None

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
