"""CIFAR-100, SVHN and image-folder data sets, generated here in each real on-disk layout: read,
cut into subsets, normalised by their own statistics, and trained on for an epoch."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke, tar_folder, tiny_config
from PIL import Image

from bnorder.data.catalog import DataError, DataShape, Split, channel_stats
from bnorder.data.loaders import DeviceLoader, load_data
from bnorder.data.options import DataConfig
from bnorder.data.sources import data_shape, read_data
from bnorder.runs.config import ConfigError, build_config


def _images(n: int, size: int, seed: int, classes: int) -> tuple[np.ndarray, list[int]]:
    """n NHWC images, each class its own mean colour (so that a net can learn them)."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(99).integers(0, 256, size=(classes, 3))
    labels = [i % classes for i in range(n)]
    noise = rng.integers(-30, 31, size=(n, size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels


def write_cifar100(root: Path, train: int = 200, test: int = 100) -> Path:
    """torchvision's cifar-100-python: train, test (fine and coarse labels) and meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = _images(n, 32, seed, 100)
        batch = {
            "data": images.transpose(0, 3, 1, 2).reshape(n, -1),
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "filenames": [f"{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    names = {"fine_label_names": [f"class{i:02d}" for i in range(100)], "coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(names))
    return root


def write_svhn(root: Path, train: int = 60, test: int = 30) -> Path:
    """torchvision's SVHN files: X is 32×32×3×N, y is N×1 with the digit 0 labelled 10."""
    from scipy.io import savemat

    root.mkdir(parents=True)
    for name, n, seed in (("train_32x32.mat", train, 1), ("test_32x32.mat", test, 2)):
        images, labels = _images(n, 32, seed, 10)
        y = np.array([[label if label else 10] for label in labels], dtype=np.uint8)
        savemat(root / name, {"X": images.transpose(1, 2, 3, 0), "y": y})
    return root


FOLDER_CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def write_image_folder(root: Path, size: int = 48, per_class: tuple[int, int] = (8, 4)) -> Path:
    """train/<class>/ and test/<class>/ of 5 classes of size×size RGB images."""
    for split, n, seed in (("train", per_class[0], 1), ("test", per_class[1], 2)):
        images, labels = _images(n * 5, size, seed, 5)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / FOLDER_CLASSES[label] / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


def test_cifar100_pickles_and_tarball(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "c100")
    data = read_data(root, "cifar100")
    assert len(data.classes) == 100 and data.classes[7] == "class07"
    assert data.train.images.shape == (200, 3, 32, 32) and len(data.test) == 100
    assert data.train.labels.tolist() == [i % 100 for i in range(200)]  # the fine labels
    packed = read_data(tar_folder(root, tmp_path / "c100.tar.gz", "x"), "cifar100")
    assert torch.equal(packed.train.images, data.train.images)
    assert packed.stats == data.stats == channel_stats(data.train.images)
    assert data_shape(DataConfig(dataset="cifar100", root=str(root))) == data.shape


def test_svhn_mat_files_and_tarball(tmp_path: Path) -> None:
    root = write_svhn(tmp_path / "svhn")
    data = read_data(root, "svhn")
    assert data.classes == [str(d) for d in range(10)]
    assert data.train.labels.tolist()[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # 10 → 0
    assert data.train.images.shape == (60, 3, 32, 32)
    _, labels = _images(60, 32, 1, 10)
    assert data.train.labels.tolist() == labels
    packed = read_data(tar_folder(root, tmp_path / "svhn.tar.gz", "svhn"), "svhn")
    assert torch.equal(packed.test.images, data.test.images)
    with pytest.raises(DataError, match="SVHN not found .* train_32x32.mat and test_32x32.mat"):
        read_data(tmp_path / "nowhere", "svhn")


def test_an_svhn_label_outside_one_to_ten_is_named(tmp_path: Path) -> None:
    from scipy.io import savemat

    root = write_svhn(tmp_path / "svhn")
    images, _ = _images(4, 32, 1, 10)
    savemat(
        root / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": [[1], [11], [2], [3]]}
    )
    with pytest.raises(DataError, match="test_32x32.mat: label 11 outside SVHN's 1 to 10"):
        read_data(root, "svhn")


def test_image_folder_of_48px_images_in_5_classes(tmp_path: Path, cache_dir: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    data = read_data(root, "folder")
    assert data.classes == FOLDER_CLASSES and data.image_shape == (3, 48, 48)
    assert len(data.train) == 40 and len(data.test) == 20
    images = data.train.images.double() / 255
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).tolist()
    assert data.stats.mean == pytest.approx(mean, abs=1e-6)
    assert data.stats.std == pytest.approx(std, abs=1e-6)
    (cache,) = cache_dir.glob("*.npz")
    with np.load(cache) as npz:  # the statistics are kept with the decoded images
        assert npz["mean"].tolist() == list(data.stats.mean)
    again = read_data(root, "folder")  # from the cache
    assert torch.equal(again.train.images, data.train.images) and again.stats == data.stats
    packed = read_data(tar_folder(root, tmp_path / "pets.tar.gz", "pets"), "folder")
    assert torch.equal(packed.train.images, data.train.images)
    assert data_shape(DataConfig(dataset="folder", root=str(root))) == DataShape(3, 48, 48, 5)


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", size=48)
    wide = Image.new("RGB", (64, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (16, 0, 48, 32))  # a white centre, black at both sides
    wide.save(root / "train" / "ant" / "wide.png")
    with pytest.raises(DataError, match=r"wide.png: 64×32, where .* is 48×48: set data.image_size"):
        read_data(root, "folder")
    data = read_data(root, "folder", image_size=24)
    assert data.image_shape == (3, 24, 24)
    (index,) = [i for i, img in enumerate(data.train.images) if img.float().mean() > 250]
    assert data.train.labels[index] == 0  # the wide image, its white centre kept whole


def test_greyscale_folders_give_one_channel_and_mixed_ones_rgb(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(4):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (16, 16), 40 * i + (100 if cls == "b" else 0)).save(path)
    data = read_data(root, "folder")
    assert data.image_shape == (1, 16, 16) and len(data.stats.mean) == 1
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "train" / "a" / "colour.png")
    assert read_data(root, "folder", cache_dir=tmp_path / "c2").image_shape == (3, 16, 16)


def test_the_data_shape_is_found_with_nothing_decoded(tmp_path: Path, cache_dir: Path) -> None:
    """What ``bnorder model`` and ``audit CONFIG`` build for: a folder's from its class
    folders and image headers (one colour image makes it RGB, as reading it does), or from
    its decoded cache; None where only decoding would tell."""
    root = tmp_path / "grey"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(3):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (16, 12), 40 * i).save(path)
    config = DataConfig(dataset="folder", root=str(root))
    assert data_shape(config) == DataShape(1, 12, 16, 2)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())  # nothing was decoded
    sized = config.model_copy(update={"image_size": 8})
    assert (
        data_shape(sized) == DataShape(1, 8, 8, 2) == read_data(root, "folder", image_size=8).shape
    )
    Image.new("RGB", (16, 12), (1, 2, 3)).save(root / "test" / "b" / "colour.png")
    assert data_shape(config) == DataShape(3, 12, 16, 2) == read_data(root, "folder").shape
    packed = tar_folder(root, tmp_path / "grey.tar.gz", "grey")
    in_tarball = DataConfig(dataset="folder", root=str(packed))
    assert data_shape(in_tarball) is None  # not decoded yet: only reading it would tell
    assert read_data(packed, "folder").shape == data_shape(in_tarball)  # its cache's, now
    assert data_shape(DataConfig(dataset="folder", root=str(tmp_path / "nowhere"))) is None
    assert data_shape(DataConfig(dataset="svhn", root="nowhere")) == DataShape(3, 32, 32, 10)


def test_subsets_are_class_balanced_for_any_class_count(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets")
    config = DataConfig(dataset="folder", root=str(root), train_subset=15, test_subset=10)
    data = load_data(config)
    assert torch.bincount(data.train.labels).tolist() == [3] * 5
    assert torch.bincount(data.test.labels).tolist() == [2] * 5
    c100 = load_data(
        DataConfig(dataset="cifar100", root=str(write_cifar100(tmp_path / "c")), train_subset=100)
    )
    assert torch.bincount(c100.train.labels).tolist() == [1] * 100


def test_the_loader_normalises_by_the_data_sets_statistics_and_pads_by_an_eighth(
    tmp_path: Path,
) -> None:
    data = read_data(write_image_folder(tmp_path / "pets"), "folder")
    loader = DeviceLoader(
        data.train, batch_size=40, device=torch.device("cpu"), train=False, stats=data.stats
    )
    ((batch, _),) = loader.epoch()
    assert batch.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # zero mean, per channel
    assert batch.std(dim=(0, 2, 3)).sub(1).abs().max() < 1e-3
    augmenting = DeviceLoader(
        data.train, batch_size=8, device=torch.device("cpu"), train=True, augment=True,
        stats=data.stats,
    )  # fmt: skip
    assert augmenting.pad == 6


def test_no_flip_where_the_data_says_so(tmp_path: Path) -> None:
    """A ramp brightening to the right stays so under every crop unless flipped."""
    ramp = torch.arange(32, dtype=torch.uint8).mul(7).add(10).expand(64, 3, 32, 32).clone()
    split = Split(ramp, torch.zeros(64, dtype=torch.int64))
    from bnorder.data.catalog import CIFAR10_STATS

    def rising(flip: bool) -> list[bool]:
        loader = DeviceLoader(
            split, batch_size=64, device=torch.device("cpu"), train=True, augment=True,
            flip=flip, stats=CIFAR10_STATS, seed=1,
        )  # fmt: skip
        ((batch, _),) = loader.epoch(1)
        rows = batch[:, 0, 16]
        return [bool((row[1:] >= row[:-1]).all()) for row in rows[:, 4:-4]]

    assert all(rising(flip=False))
    assert not all(rising(flip=True))


def test_svhn_is_not_flipped_unless_asked_and_others_are() -> None:
    from bnorder.data.loaders import flips

    assert not flips(DataConfig(dataset="svhn"))
    assert flips(DataConfig(dataset="svhn", augment_flip=True))
    assert flips(DataConfig(dataset="folder")) and not flips(DataConfig(augment_flip=False))
    assert DataConfig(dataset="cifar100").root == "data/cifar100"


def test_config_checks_for_other_data_sets() -> None:
    with pytest.raises(ConfigError, match="data: image_size: only for dataset folder"):
        build_config({"data": {"image_size": 64}})
    with pytest.raises(ConfigError, match="pipeline: torchvision reads cifar10 only, not svhn"):
        build_config({"data": {"dataset": "svhn", "pipeline": "torchvision"}})
    with pytest.raises(ConfigError, match="data.dataset"):
        build_config({"data": {"dataset": "imagenet"}})
    with pytest.raises(ConfigError, match="augment_flip: false needs pipeline: device"):
        build_config({"data": {"pipeline": "torchvision", "augment_flip": False}})
    with pytest.raises(ConfigError, match="download: a folder data set is not downloaded"):
        build_config({"data": {"dataset": "folder", "download": True}})
    with pytest.raises(ConfigError, match="'model.preset' cannot be swept"):
        build_config({"grid": {"model.preset": ["wrn-16-4", "wrn-28-10"]}})


def _one_epoch(tmp_path: Path, root: Path, data: dict, model: dict | None = None) -> Path:
    config = tiny_config(
        tmp_path,
        root,
        data={"root": str(root), **data},
        model=model or {},
        train={"epochs": 1, "batch_size": 16, "vshift_sample": 20, "recalibrate_bn": True},
        schemes=["bn_relu_drop", "bn_only"],
    )
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    return tmp_path / "results"


@pytest.mark.parametrize(
    "dataset, write, data",
    [
        ("cifar100", write_cifar100, {"train_subset": 100, "test_subset": 100}),
        ("svhn", write_svhn, {}),  # not flipped: SVHN's default
        ("folder", write_image_folder, {}),
        ("folder", lambda p: tar_folder(write_image_folder(p), p.with_suffix(".tgz"), "f"), {}),
        ("folder", write_image_folder, {"image_size": 40}),
    ],
    ids=["cifar100", "svhn", "folder", "folder-tarball", "folder-resized"],
)
def test_one_epoch_on_each_data_set(tmp_path: Path, dataset: str, write, data: dict) -> None:
    root = write(tmp_path / dataset)
    out = _one_epoch(tmp_path, root, {"dataset": dataset, **data})
    classes = {"cifar100": 100, "svhn": 10, "folder": 5}[dataset]
    run = json.loads((out / "bn_only" / "seed0" / "run.json").read_text())
    assert run["status"] == "completed" and run["config"]["data"]["dataset"] == dataset
    checkpoint = torch.load(out / "bn_only" / "seed0" / "checkpoint.pt", weights_only=False)
    assert checkpoint["model"]["classifier.weight"].shape[0] == classes
    metrics = pd.read_csv(out / "bn_only" / "seed0" / "metrics.csv")
    assert len(metrics) == 1 and 0 <= metrics["test_acc"].iloc[0] <= 1
    compared = invoke("compare", out)
    assert compared.exit_code == 0, compared.output


def test_the_data_set_is_part_of_a_runs_identity(tmp_path: Path) -> None:
    """The same images read as another data set are other runs: a folder holding CIFAR-10
    runs refuses them, rather than mixing them in."""
    from conftest import write_folder_layout

    root = write_folder_layout(tmp_path / "cifar")
    _one_epoch(tmp_path, root, {})
    config = tiny_config(
        tmp_path, root, data={"dataset": "folder"}, train={"epochs": 1, "batch_size": 16}
    )
    result = invoke("run", config)
    assert result.exit_code == 2
    assert "data.dataset" in result.output


def test_decoding_into_the_cache_is_counted_and_shown(tmp_path: Path) -> None:
    from bnorder.data.catalog import reporting_decodes

    root = write_image_folder(tmp_path / "pets", per_class=(110, 2))  # 560 train, 10 test
    seen: list[tuple[int, int]] = []
    with reporting_decodes(lambda what, done, total: seen.append((done, total))):
        read_data(root, "folder")
        read_data(root, "folder")  # from the cache: nothing decoded
    assert seen == [(500, 560), (560, 560)]
    config = tiny_config(tmp_path, root, data={"dataset": "folder"}, train={"epochs": 1})
    result = invoke("run", config, "--set", f"data.cache_dir={tmp_path / 'fresh'}")
    assert result.exit_code == 0, result.output
    assert f"decoded 560 images of {root} into the cache" in result.output


# ---------------------------------------------------------------- hostile input (issue 26)


def test_images_that_would_decode_past_the_limit_are_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 photos of 12,000×12,000 decode to 8 GiB: the total is known from the count and one
    header, so the set is refused in one line before any image is decoded."""
    import bnorder.data.images as images

    root = write_image_folder(tmp_path / "pets", size=48)  # 60 images of 48×48
    monkeypatch.setattr(images, "DECODED_LIMIT", 100_000)
    opened: list[object] = []
    monkeypatch.setattr(Image.Image, "load", lambda self: opened.append(self))
    said = r"60 images of 48×48 decode to 405 KiB, more than the 97\.7 KiB bnorder decodes"
    with pytest.raises(DataError, match=rf"pets: {said}: set data.image_size"):
        read_data(root, "folder")
    with pytest.raises(DataError, match=r"pets: 60 images of 40×40 decode to 281 KiB"):
        read_data(root, "folder", image_size=40)
    assert opened == []  # nothing decoded
    monkeypatch.setattr(images, "DECODED_LIMIT", 10_000)
    tarball = tar_folder(root, tmp_path / "pets.tar.gz", "pets")
    with pytest.raises(DataError, match=r"pets.tar.gz: 60 images of 48×48 decode to"):
        read_data(tarball, "folder")


def test_a_decode_error_says_why_and_other_sizes_stop_the_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error without a message (MemoryError()) is named by its type, not '()'; an image
    of another size is refused from its header, before the rest is decoded."""
    root = write_image_folder(tmp_path / "pets", size=8)
    decoded: list[object] = []
    real = Image.Image.convert

    def convert(self, *args, **kwargs):
        decoded.append(1)
        if fail:
            raise MemoryError()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)
    fail = True
    with pytest.raises(DataError, match=r"train/ant/000.png: cannot decode image \(MemoryError\)"):
        read_data(root, "folder")
    fail, decoded[:] = False, []
    Image.new("RGB", (9, 8)).save(root / "train" / "ant" / "001.png")
    with pytest.raises(DataError, match=r"ant/001.png: 9×8, where .*000.png is 8×8"):
        read_data(root, "folder")
    assert len(decoded) == 1  # the first image only


def test_a_folder_of_one_class_is_refused(tmp_path: Path) -> None:
    """One class trains to 100 % and would compare as a result: nothing to tell apart."""
    root = write_image_folder(tmp_path / "pets", size=8)
    for split in ("train", "test"):
        for cls in FOLDER_CLASSES[1:]:
            for image in (root / split / cls).iterdir():
                image.unlink()
            (root / split / cls).rmdir()
    with pytest.raises(DataError, match=r"pets: 1 class \(ant\) under train/: at least 2"):
        read_data(root, "folder")


@pytest.mark.parametrize(
    ("y", "said"),
    [
        ([[1.0], [float("nan")], [2.0], [3.0]], "label nan is not a whole number"),
        ([[1.5], [1.7], [2.0], [3.0]], "label 1.5 is not a whole number"),
        ([["a"], ["b"], ["c"], ["d"]], "labels of type <U1, not numbers"),
    ],
)
def test_svhn_labels_must_be_whole_numbers(tmp_path: Path, y: list, said: str) -> None:
    from scipy.io import savemat

    root = write_svhn(tmp_path / "svhn")
    images, _ = _images(4, 32, 1, 10)
    savemat(root / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
    with pytest.raises(DataError, match=rf"test_32x32.mat: {said}"):
        read_data(root, "svhn")


def test_svhn_images_without_the_n_axis_are_refused(tmp_path: Path) -> None:
    from scipy.io import savemat

    root = write_svhn(tmp_path / "svhn")
    images, _ = _images(1, 32, 1, 10)
    savemat(root / "test_32x32.mat", {"X": images[0], "y": [[1]]})
    with pytest.raises(DataError, match=r"test_32x32.mat: X of shape \(32, 32, 3\) and type"):
        read_data(root, "svhn")


def test_an_svhn_file_that_inflates_past_its_limit_is_refused_before_it_is_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3.8 MB compressed .mat inflated to 4 GB: its variables' headers give the size."""
    from scipy.io import savemat

    from bnorder.data import catalog

    root = write_svhn(tmp_path / "svhn")
    X, y = np.zeros((32, 32, 3, 2000), np.uint8), np.ones((2000, 1))
    savemat(root / "test_32x32.mat", {"X": X, "y": y}, do_compression=True)  # 6 kB
    monkeypatch.setitem(catalog.LIMITS, "SVHN .mat file", 2**20)
    said = r"test_32x32.mat: its X and y inflate to 5.87 MiB, more than the 1 MiB"
    with pytest.raises(DataError, match=said):
        read_data(root, "svhn")


def test_validate_says_what_run_would_of_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate (and model) refuse what run refuses before decoding: a folder of one class,
    and one that would decode past the limit; neither decodes an image to say so."""
    from bnorder.data import images

    root = write_image_folder(tmp_path / "pets", size=8)
    config = tiny_config(tmp_path, root, data={"dataset": "folder", "image_size": None})
    monkeypatch.setattr(images, "DECODED_LIMIT", 1_000)  # 60 images of 8×8×3 are 11,520 bytes
    for command in ("validate", "model"):
        result = invoke(command, config)
        assert result.exit_code == 2, result.output
        assert "decode to" in result.output and len(result.output.strip().splitlines()) == 1
    monkeypatch.undo()
    for split in ("train", "test"):
        for cls in FOLDER_CLASSES[1:]:
            for image in (root / split / cls).iterdir():
                image.unlink()
            (root / split / cls).rmdir()
    for command in ("validate", "model"):
        result = invoke(command, config)
        assert result.exit_code == 2, result.output
        assert "1 class (ant) under train/: at least 2" in result.output
