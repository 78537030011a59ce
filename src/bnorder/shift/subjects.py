"""The models ``bnorder audit`` examines by name: ``torchvision:NAME``, ``timm:NAME``,
``path/to/file.py:factory`` or ``package.module:factory``, their weights, and the images to
measure them on; ``audit_model`` audits one (``audit.audit``). Nothing here prints."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnorder.core.errors import BnorderError
from bnorder.core.files import (
    WEIGHTS_BYTES,
    FileRefused,
    atomic_write,
    open_bounded,
    writing_to,
)
from bnorder.shift.audit import Audit, ModelError, audit, random_batches

# What an audit may be asked to build, checked before anything is allocated
# (docs/variance-shift.md and the options' help quote these): images or inputs to measure on;
# values in one random input (3,2048,2048 fits); values in all the random inputs measured on
# (1 GiB of float32).
SAMPLE_LIMIT = 100_000
INPUT_LIMIT = 2**24
RANDOM_LIMIT = 2**28
# inputs built where nothing is measured: the one example batch fx's fallback may need
EXAMPLE_SIZE = 2


def check_sizes(sample: int, input_shape: tuple[int, ...] | None, measured: bool) -> None:
    """Refuse, in one line, a ``sample`` or ``input_shape`` past the limits above; the total
    counts only where the random inputs are ``measured`` (else only an example is built)."""
    if sample > SAMPLE_LIMIT:
        raise ModelError(f"--sample {sample}: at most {SAMPLE_LIMIT:,} images or inputs")
    if input_shape is None:
        return
    shape, values = ",".join(map(str, input_shape)), math.prod(input_shape)
    if values > INPUT_LIMIT:
        raise ModelError(
            f"--input-shape {shape}: {values:,} values per input, at most {INPUT_LIMIT:,} values"
        )
    if measured and sample * values > RANDOM_LIMIT:
        raise ModelError(
            f"--sample {sample} of --input-shape {shape}: {sample * values:,} random values, "
            f"at most {RANDOM_LIMIT:,} (1 GiB): fewer or smaller inputs"
        )


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:factory`` or
    ``package.module:factory``, built with ``kwargs``. Raises ModelError in one line."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelError(f"{spec}: expected torchvision:NAME, timm:NAME or FILE.py:factory")
    kwargs = kwargs or {}
    try:  # the user's code, run as they asked: whatever it raises, sys.exit too, is its failure
        factory = _factory(source, name)
        model = factory(**kwargs)
    except ModelError:
        raise
    except (Exception, SystemExit) as err:
        raise ModelError(f"{spec}: cannot build the model ({user_failure(err)})") from None
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
        module = _import_file(Path(source))
    else:
        module = importlib.import_module(source)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelError(f"{source}: has no callable {name!r}")
    return factory


def _import_file(path: Path) -> Any:
    """The module a ``FILE.py`` is, imported as ``python FILE.py`` would run it: with its
    folder first on the import path, so that it can import the modules beside it. The path is
    given back after the import (a model file's folder should not shadow other modules)."""
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    folder = str(path.resolve().parent)
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)  # the user's own code, run as they asked
    finally:
        with contextlib.suppress(ValueError):  # the user's code may have removed it itself
            sys.path.remove(folder)
    return module


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


def save_recalibrated(result: Audit, path: Path) -> None:
    """The re-calibrated copy's state_dict at ``path`` (``torch.load`` it into the same model,
    or give it to ``--weights``), written atomically: the whole file or none. Raises
    ModelError where nothing was re-calibrated, PathError where ``path`` takes no file."""
    model = result.recalibrated_model
    if model is None:
        raise ModelError(
            f"--save {path}: nothing was re-calibrated to save (that needs a model with BN, "
            "measured: --weights, or a factory's trained weights, with --data or --input-shape)"
        )
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with writing_to(path, "the re-calibrated weights"):
        atomic_write(path, lambda handle: torch.save(state, handle))


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
    # an untrained model's shifts say little: its structure only, unless weights were given
    # or its factory was asked for trained ones (torchvision's weights=, timm's pretrained=);
    # then only an example is built, for fx's fallback and to check the inputs fit
    trained = weights is not None or pretrained
    check_sizes(sample, input_shape, trained)
    if weights is not None:
        load_weights(model, weights)
    found = _sample(data, input_shape, sample if trained else EXAMPLE_SIZE, image_size)
    example = found.batches[0] if found.batches else None
    try:  # the model's forward is the user's code: whatever it raises (sys.exit too) is its
        return _audit_on(model, found if trained else _Sample(), example, recalibrate)
    except BnorderError:
        raise
    except (Exception, SystemExit) as err:
        raise ModelError(f"{spec}: cannot run on the inputs given ({user_failure(err)})") from None


@dataclass
class _Sample:
    """What an audit measures on: input batches and their description; labelled test batches
    and the data's number of classes, where the data has them."""

    batches: list[torch.Tensor] | None = None
    described: str | None = None
    labelled: list[Any] | None = None
    classes: int | None = None


def _sample(
    data: Path | None, input_shape: tuple[int, ...] | None, sample: int, image_size: int | None
) -> _Sample:
    if data is not None and image_size is not None:
        return _Sample(*_folder_batches(data, sample, image_size))
    if data is not None:
        batches, labelled, described, classes = _cifar_batches(data, sample)
        return _Sample(batches, described, labelled, classes)
    if input_shape is not None:
        described = f"{sample} random inputs of shape {input_shape} (real data is better)"
        return _Sample(random_batches(input_shape, sample), described)
    return _Sample()


def _audit_on(
    model: nn.Module, found: _Sample, example: torch.Tensor | None, recalibrate: bool
) -> Audit:
    """The audit measured on ``found``; the inputs first tried on ``example`` (two of them),
    so that inputs the model cannot take are said now, not mid-audit. No accuracy where the
    model's outputs are not the data's classes: a note says why."""
    outputs, measured_on, labelled = None, found.described, found.labelled
    if example is not None:
        with torch.no_grad():
            outputs = model.eval()(example[:2])
    note = _other_classes(outputs, found.classes) if labelled is not None else None
    if labelled is not None and not note:
        measured_on = f"{measured_on}; accuracy on {sum(len(y) for _, y in labelled)} test images"
    result = audit(
        model,
        found.batches,
        example=example,
        recalibrate=recalibrate,
        measured_on=measured_on,
        labelled=None if note else labelled,
    )
    result.notes += [note] if note else []
    return result


def _other_classes(outputs: Any, classes: int | None) -> str | None:
    """Why no accuracy is given where the model's outputs are not one score per class of the
    data (a 1000-class model on CIFAR-10 scores about 0%, which would read as a finding)."""
    width = outputs.shape[1] if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else None
    if width == classes:
        return None
    has = f"{width} outputs" if width is not None else "outputs that are not one score per class"
    return f"no test accuracy: the model has {has} and the data {classes} classes"


def user_failure(err: BaseException) -> str:
    """What the user's code raised, in one line: its type and message (the first 200
    characters; torch's shape errors span lines)."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:200]


def _cifar_batches(root: Path, sample: int) -> tuple[list[torch.Tensor], list[Any], str, int]:
    """Class-balanced samples of the training images (to measure on) and of the test set
    (with labels, for accuracy), normalised as runs see them; and the number of classes."""
    from bnorder.data.catalog import DATASETS, DataError
    from bnorder.data.loaders import DeviceLoader, balanced_subset
    from bnorder.data.sources import locate_data, read_data

    if locate_data(root, "cifar10") is None:  # read_data's advice names config keys
        layouts = DATASETS["cifar10"].layouts()
        raise DataError(
            f"--data {root}: no CIFAR-10 there (looked for {layouts}); give --data a local copy "
            "in one of those layouts, or a class-folder tree of images with --image-size N"
        )
    data = read_data(root, "cifar10")
    cpu, classes = torch.device("cpu"), len(data.classes)

    def batches(split: Any, what: str) -> tuple[list[Any], int]:
        chosen = balanced_subset(split, min(sample, len(split)), classes, what=what)
        loader = DeviceLoader(chosen, batch_size=256, device=cpu, train=False, stats=data.stats)
        return list(loader.epoch()), len(chosen)

    train, n_train = batches(data.train, "--sample")
    test, _ = batches(data.test, "--sample")
    images = [images for images, _ in train]
    return images, test, f"{n_train} training images of {root}", classes


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _folder_batches(root: Path, sample: int, size: int) -> tuple[list[torch.Tensor], str]:
    """Up to ``sample`` images of a class-folder tree (``root/<class>/*`` or with ``train/``
    above the classes) of any size: read and decoded by the reader runs use (regular files
    of bounded size, a bounded total, PIL's pixel limit: one line naming the image), resized
    and centre-cropped to ``size``, normalised with ImageNet's statistics (what
    torchvision's and timm's pretrained models expect), taken in turn from each class."""
    from bnorder.data.catalog import DataError
    from bnorder.data.images import Sizing, class_files, decode_images, stack_images

    folder = root / "train" if (root / "train").is_dir() else root
    try:
        by_class = class_files(folder)
    except OSError as err:
        raise DataError(f"{folder}: not a class-folder tree of images ({err})") from None
    if not by_class:
        raise DataError(f"{folder}: not a class-folder tree of images (no images in <class>/)")
    named = [
        [(f"{cls}/{name}", path) for name, path in sorted(found, key=lambda item: item[0])]
        for cls, found in by_class.items()
    ]
    chosen = [e for group in itertools.zip_longest(*named) for e in group if e is not None]
    arrays = decode_images(chosen[:sample], str(folder), Sizing(size), size_key="--image-size")
    images = torch.from_numpy(stack_images(arrays, rgb=True)).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    images = (images - mean) / std
    batches = list(images.split(64))
    return batches, f"{len(images)} images of {folder} at {size}×{size}"
