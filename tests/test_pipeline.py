"""The device-resident pipeline against the textbook one, and the device options (issue 6).

The reference is torchvision's own: ImageFolder over a class-folder tree, PIL transforms,
a DataLoader with worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import interrupt_after, invoke, tar_folder, tiny_config, write_folder_layout

from bnorder.data.catalog import CIFAR10_STATS, DataError, Split
from bnorder.data.loaders import DeviceLoader, load_data
from bnorder.data.textbook import TorchvisionLoader, torchvision_dataset
from bnorder.runs.config import DataConfig

CPU = torch.device("cpu")


def both_loaders(root: Path, subset: int | None, *, train: bool, workers: int = 0, **kw):
    data = load_data(DataConfig(root=str(root), train_subset=subset))
    split, index = (data.train, data.train_index) if train else (data.test, data.test_index)
    fast = DeviceLoader(
        split, batch_size=16, device=CPU, train=train, seed=3, stats=data.stats, **kw
    )
    dataset = torchvision_dataset(root, train=train)
    reference = TorchvisionLoader(
        dataset,
        split.labels,
        index=index,
        batch_size=16,
        device=CPU,
        train=train,
        seed=3,
        workers=workers,
        **kw,
    )
    return fast, reference


@pytest.mark.parametrize("subset", [None, 40])
def test_device_loader_yields_what_the_torchvision_pipeline_yields(
    folder_root: Path, subset: int | None
) -> None:
    for train in (True, False):
        fast, reference = both_loaders(folder_root, subset, train=train, workers=2)
        assert len(fast) == len(reference)
        pairs = list(zip(fast.epoch(5), reference.epoch(5), strict=True))
        assert len(pairs) == len(fast)
        for (x, y), (x_ref, y_ref) in pairs:
            assert torch.equal(y, y_ref)  # same images in the same (seed, epoch) order
            torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)  # same normalisation
        if train:  # another epoch, another order
            assert not torch.equal(next(fast.epoch(6))[0], pairs[0][0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_the_torchvision_pipeline_augments_and_is_reproducible(
    folder_root: Path, workers: int
) -> None:
    _, reference = both_loaders(folder_root, None, train=True, workers=workers, augment=True)
    _, plain = both_loaders(folder_root, None, train=True, workers=workers)  # the same order
    first = torch.cat([x for x, _ in reference.epoch(1)])
    assert not torch.equal(first, torch.cat([x for x, _ in plain.epoch(1)]))  # augmented
    torch.manual_seed(123)  # what dropout draws from: the pipeline must neither use nor move it
    again = torch.cat([x for x, _ in reference.epoch(1)])
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(first, again) and torch.equal(after, torch.rand(1))


def test_device_augmentation_is_per_sample_and_reproducible() -> None:
    pattern = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8)
    same = pattern.view(1, 3, 32, 32).repeat(64, 1, 1, 1)  # 64 copies of one image
    split = Split(same, torch.zeros(64, dtype=torch.int64))
    loader = DeviceLoader(
        split, batch_size=64, device=CPU, train=True, augment=True, seed=1, stats=CIFAR10_STATS
    )
    ((batch, _),) = loader.epoch(1)
    distinct = {image.numpy().tobytes() for image in batch}
    assert len(distinct) > 20  # copies of one image got different crops and flips
    ((again, _),) = loader.epoch(1)
    ((other, _),) = loader.epoch(2)
    assert torch.equal(batch, again) and not torch.equal(batch, other)
    seed2 = DeviceLoader(
        split, batch_size=64, device=CPU, train=True, augment=True, seed=2, stats=CIFAR10_STATS
    )
    assert not torch.equal(batch, next(seed2.epoch(1))[0])


def test_torchvision_pipeline_from_a_tarball_and_refusals(
    tmp_path: Path, cache_dir: Path, folder_root: Path, pickle_root: Path
) -> None:
    tarball = tar_folder(folder_root, tmp_path / "c.tar.gz", arcname="top")
    dataset = torchvision_dataset(tarball, train=False)  # extracted once into the cache
    assert (
        len(dataset) == 50 and dataset.classes == load_data(DataConfig(root=str(tarball))).classes
    )
    assert len(list(cache_dir.glob("*.files"))) == 1
    with pytest.raises(DataError, match="torchvision's CIFAR10 refuses it"):
        torchvision_dataset(pickle_root, train=True)  # fake batches fail its md5 check
    data = load_data(DataConfig(root=str(folder_root)))
    with pytest.raises(DataError, match="labels differ"):
        TorchvisionLoader(
            torchvision_dataset(folder_root, train=True),
            data.train.labels.flip(0),
            index=None,
            batch_size=8,
            device=CPU,
            train=True,
        )


def test_fast_path_trains_as_well_as_the_textbook_path(tmp_path: Path) -> None:
    root = write_folder_layout(tmp_path / "cifar", train_per_class=30, test_per_class=10, palette=0)
    accuracy = {}
    for pipeline in ("device", "torchvision"):
        config = tiny_config(
            tmp_path,
            root,
            data={"pipeline": pipeline, "workers": 2},
            schemes={"bn_only": ["bn", "act"]},
            train={"epochs": 3},
            seeds=[0, 1],
        )
        result = invoke("run", config, "--out", tmp_path / pipeline)
        assert result.exit_code == 0, result.output
        finals = [
            pd.read_csv(tmp_path / pipeline / "bn_only" / f"seed{s}" / "metrics.csv")[
                "test_acc"
            ].iloc[-1]
            for s in (0, 1)
        ]
        accuracy[pipeline] = sum(finals) / 2
    assert accuracy["device"] > 0.4  # chance is 0.1: it learns the fake classes
    assert abs(accuracy["device"] - accuracy["torchvision"]) < 0.15  # within seed noise


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains_resumes_and_is_recorded(
    tmp_path: Path, pickle_root: Path, precision: str, monkeypatch
) -> None:

    config = tiny_config(
        tmp_path,
        pickle_root,
        schemes={"bn_relu_drop": ["bn", "act", "dropout"]},
        train={"epochs": 3, "precision": precision, "channels_last": False, "threads": 1},
    )
    assert invoke("run", config, "--out", tmp_path / "reference").exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert invoke("run", config).exit_code == 130
    assert invoke("run", config).exit_code == 0
    info = json.loads((tmp_path / "results" / "bn_relu_drop" / "seed0" / "run.json").read_text())
    speed = info["speed"]
    assert speed["precision"] == precision and speed["channels_last"] is False
    assert speed["threads"] == 1 and speed["compile"] is False
    state = torch.load(
        tmp_path / "results" / "bn_relu_drop" / "seed0" / "checkpoint.pt", weights_only=True
    )
    assert bool(state["scaler"]) == (precision == "fp16")  # the loss scale is resumed too
    got, want = (
        pd.read_csv(tmp_path / out / "bn_relu_drop" / "seed0" / "metrics.csv").drop(
            columns=["epoch_seconds", "images_per_second"]
        )
        for out in ("results", "reference")
    )
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_auto_options_resolve_per_device(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(tmp_path, pickle_root, schemes={"bn_only": ["bn", "act"]})
    assert invoke("run", config).exit_code == 0
    info = json.loads((tmp_path / "results" / "bn_only" / "seed0" / "run.json").read_text())
    speed = info["speed"]
    assert speed["precision"] == "fp32" and speed["channels_last"] is True  # auto, on a CPU
    assert speed["cudnn_benchmark"] is False and speed["first_step_seconds"] > 0


def test_throughput_benchmark_runs_and_writes_its_row(tmp_path: Path) -> None:
    """The benchmark's numbers are not checked (no timed tests); that it runs end to end is."""
    import subprocess
    import sys

    root = write_folder_layout(tmp_path / "cifar", train_per_class=20)
    config = tiny_config(tmp_path, root)
    out = tmp_path / "bench.csv"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    command = [sys.executable, str(script), str(config), "--images", "100", "--test-images", "50"]
    done = subprocess.run(
        [*command, "--steps", "2", "--workers", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "a/b = " in done.stdout
    (row,) = pd.read_csv(out).to_dict("records")
    assert row["scheme"] == "bn_relu_drop" and row["images"] == 100 and row["workers"] == 1
    assert row["textbook_dataset"] == "ImageFolder"
    for name in ("trainer", "textbook", "textbook_same", "floor_eager", "floor_same"):
        assert row[f"{name}_images_per_second"] > 0


def test_resource_settings_are_not_part_of_a_runs_identity() -> None:
    from bnorder.runs.config import ExperimentConfig, config_to_dict
    from bnorder.runs.plan import run_identity

    def identity(**changes) -> dict:
        config = config_to_dict(ExperimentConfig())
        for key, value in changes.items():
            section, leaf = key.split("__")
            config[section][leaf] = value
        return run_identity(config, "cpu")

    base = identity()
    assert identity(train__threads=1, data__workers=7) == base  # speed only, same numbers
    assert identity(train__channels_last=False) != base  # other kernels, other float sums
    textbook = identity(data__pipeline="torchvision")
    assert textbook != base
    # the textbook pipeline's augmentation comes from its workers' seeds
    assert identity(data__pipeline="torchvision", data__workers=7) != textbook


def test_compiled_runs_train_resume_and_keep_plain_weight_names(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    """torch.compile with its eager backend: the same code path, without a C++ build."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    config = tiny_config(tmp_path, pickle_root, train={"compile": True})
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "results" / "bn_relu_drop" / "seed0"
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed" and info["speed"]["compile"] is True
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])
    diagnosed = invoke("diagnose", folder, "--sample", "50")  # hooks on the eager model
    assert diagnosed.exit_code == 0 and "features.stage1.0.bn" in diagnosed.output
