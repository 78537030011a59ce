"""The models ``bnorder audit`` examines by name: ``torchvision:NAME``, ``timm:NAME``,
``path/to/file.py:factory`` or ``package.module:factory``, their weights, and the images to
measure them on; ``audit_model`` audits one (``audit.audit``). Nothing here prints."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnorder.core.files import WEIGHTS_BYTES, FileRefused, open_bounded
from bnorder.shift.audit import Audit, ModelError, audit, random_batches


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:factory`` or
    ``package.module:factory``, built with ``kwargs``. Raises ModelError in one line."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelError(f"{spec}: expected torchvision:NAME, timm:NAME or FILE.py:factory")
    kwargs = kwargs or {}
    try:
        factory = _factory(source, name)
        model = factory(**kwargs)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{spec}: cannot build the model ({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: the factory returned a {type(model).__name__}, not a module")
    return model


def _factory(source: str, name: str) -> Callable[..., Any]:
    if source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ModelError(f"torchvision:{name}: no such model in torchvision")
        # untrained unless asked (--set weights=DEFAULT downloads torchvision's, where it can)
        return lambda **kw: torchvision.models.get_model(name, **{"weights": None, **kw})
    if source == "timm":
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise ModelError("timm:… needs timm: pip install 'bnorder[timm]'") from None
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # the user's own code, run as they asked
    else:
        module = importlib.import_module(source)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelError(f"{source}: has no callable {name!r}")
    return factory


def load_weights(model: nn.Module, path: Path) -> None:
    """A state_dict, or a checkpoint holding one under ``model`` or ``state_dict`` (a bnorder
    run's checkpoint is one), loaded with ``weights_only``. Raises ModelError naming the first
    missing or unexpected key."""
    try:
        with open_bounded(path, WEIGHTS_BYTES, "weights file") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except FileRefused as err:  # a FIFO would block torch.load, a device never end
        raise ModelError(str(err)) from None
    except Exception as err:
        raise ModelError(f"{path}: not a weights file ({type(err).__name__})") from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds no state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        which = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise ModelError(f"{path}: does not fit the model ({which})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # a tensor of another shape
        reason = " ".join(str(err).split())[:200]
        raise ModelError(f"{path}: does not fit the model ({reason})") from None


def audit_model(
    model: nn.Module,
    spec: str,
    *,
    pretrained: bool = False,
    weights: Path | None = None,
    data: Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    sample: int = 512,
    recalibrate: bool = False,
    image_size: int | None = None,
) -> Audit:
    """``bnorder audit``: ``model`` (named ``spec``), with ``weights`` where given, audited;
    measured on ``sample`` training images of the CIFAR-10 copy at ``data`` (any layout
    bnorder reads; with ``image_size``, a class-folder tree of any size), or where only
    ``input_shape`` is given on random inputs of that shape. Structure only where
    neither, or where the model is untrained (the inputs then serve fx's fallback alone).
    ``pretrained``: its factory was asked for trained weights. Raises ModelError or
    DataError in one line."""
    if weights is not None:
        load_weights(model, weights)
    batches, measured_on, labelled = None, None, None
    if data is not None and image_size is not None:
        batches, measured_on = _folder_batches(data, sample, image_size)
    elif data is not None:
        batches, labelled, measured_on = _cifar_batches(data, sample)
    elif input_shape is not None:
        batches = random_batches(input_shape, sample)
        measured_on = f"{sample} random inputs of shape {input_shape} (real data is better)"
    # an untrained model's shifts say little: its structure only, unless weights were given
    # or its factory was asked for trained ones (torchvision's weights=, timm's pretrained=)
    trained = weights is not None or pretrained
    example = batches[0] if batches else None
    if not trained:
        batches, measured_on, labelled = None, None, None
    try:
        if example is not None:  # inputs the model cannot take: said now, not mid-audit
            with torch.no_grad():
                model.eval()(example[:2])
        return audit(
            model,
            batches,
            example=example,
            recalibrate=recalibrate,
            measured_on=measured_on,
            labelled=labelled,
        )
    except RuntimeError as err:  # the model refused inputs of that shape
        reason = " ".join(str(err).split())[:200]
        raise ModelError(f"{spec}: cannot run on the inputs given ({reason})") from None


def _cifar_batches(root: Path, sample: int) -> tuple[list[torch.Tensor], list[Any], str]:
    """Class-balanced samples of the training images (to measure on) and of the test set
    (with labels, for accuracy), normalised as runs see them."""
    from bnorder.data.loaders import DeviceLoader, balanced_subset
    from bnorder.data.sources import read_data

    data = read_data(root, "cifar10")
    cpu, classes = torch.device("cpu"), len(data.classes)

    def batches(split: Any, what: str) -> tuple[list[Any], int]:
        chosen = balanced_subset(split, min(sample, len(split)), classes, what=what)
        loader = DeviceLoader(chosen, batch_size=256, device=cpu, train=False, stats=data.stats)
        return list(loader.epoch()), len(chosen)

    train, n_train = batches(data.train, "--sample")
    test, n_test = batches(data.test, "--sample")
    images = [images for images, _ in train]
    return images, test, f"{n_train} training images of {root}; accuracy on {n_test} test images"


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder_batches(root: Path, sample: int, size: int) -> tuple[list[torch.Tensor], str]:
    """Up to ``sample`` images of a class-folder tree (``root/<class>/*`` or with ``train/``
    above the classes) of any size: resized and centre-cropped to ``size``, normalised with
    ImageNet's statistics (what torchvision's and timm's pretrained models expect), taken in
    turn from each class."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from bnorder.data.catalog import DataError

    folder = root / "train" if (root / "train").is_dir() else root
    prepare = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    try:
        images = ImageFolder(str(folder), transform=prepare)
    except (OSError, FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder}: not a class-folder tree of images ({err})") from None
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(images.targets):
        by_class.setdefault(label, []).append(index)
    chosen = [
        i for group in itertools.zip_longest(*by_class.values()) for i in group if i is not None
    ]
    chosen = chosen[:sample]
    try:
        tensors = [images[i][0] for i in chosen]
    except OSError as err:
        raise DataError(f"{folder}: cannot read an image ({err})") from None
    batches = [torch.stack(tensors[i : i + 64]) for i in range(0, len(tensors), 64)]
    return batches, f"{len(tensors)} images of {folder} at {size}×{size}"
