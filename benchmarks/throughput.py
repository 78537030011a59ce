"""Training throughput: bnorder's trainer against the textbook loop and the compute floor.

    python benchmarks/throughput.py configs/cifar-cpu.yaml \
        --set data.root=path/to/cifar10 [--scheme bn_relu_drop] [--images 5120] [--steps 30]

In one process, on the same model, batch size and device (the config's):
  (a) trainer   bnorder's Trainer as the config sets it up (device-resident uint8 data,
                batched crop/flip on the device, the config's precision, channels_last and
                compile): training images/s, the better of its second and third epochs (the
                first warms up and compiles)
  (b) textbook  the same model and loop fed by a torchvision dataset (ImageFolder, or
                torchvision's CIFAR10) with PIL transforms and a DataLoader with workers
                (respawned each epoch, the DataLoader default), in fp32, NCHW, eager:
                images/s as for (a); and the same data path with the trainer's
                options, which isolates what the data path costs
  (c) floor     forward + backward + step on one batch already on the device, no data work:
                eager fp32 NCHW, and with the trainer's options; the better of two timings,
                taken before (b) starts any worker process
It prints images/s and the ratios a/b and a/c, and appends them as a row to a CSV file.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bnorder.config import ConfigError, ExperimentConfig, load_config
from bnorder.data import DataError, load_cifar10
from bnorder.experiment import RunSpec, new_trainer
from bnorder.results import provenance
from bnorder.train import Trainer, resolve_device


def trainer_for(config: ExperimentConfig, scheme: str, device: torch.device, **train) -> Trainer:
    """A fresh Trainer of ``scheme``, with train keys replaced by ``train``."""
    config = config.model_copy(update={"train": config.train.model_copy(update=train)})
    spec = config.schemes[scheme]
    data = load_cifar10(config.data)
    run = RunSpec(scheme, tuple(spec.ops), tuple(spec.head), seed=0)
    return new_trainer(config, run, data, device)


def epoch_throughput(trainer: Trainer) -> float:
    """Training images/s: the better of the second and third epochs (the first warms up, and
    on a shared machine the better of two is the less disturbed)."""
    trainer.run_epoch()
    return max(trainer.run_epoch()["images_per_second"] for _ in range(2))


def floor_throughput(trainer: Trainer, steps: int) -> float:
    """Images/s of ``steps`` optimiser steps on one batch that is already on the device."""
    images, labels = next(iter(trainer.train_loader.epoch(1)))
    trainer.forward.train()

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    for _ in range(5):  # warm up (and compile, where asked)
        trainer.train_step(images, labels)
    best = 0.0
    for _ in range(2):  # the better of two timings, as for the epochs
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(images, labels)
        sync()
        best = max(best, steps * len(labels) / (time.perf_counter() - started))
    return best


def main() -> None:
    try:
        benchmark()
    except (ConfigError, DataError, OSError) as err:
        raise SystemExit(f"error: {err}") from None


def benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--scheme", help="the scheme to time (default: the config's first)")
    parser.add_argument("--images", type=int, default=5120, help="training images per epoch")
    parser.add_argument("--test-images", type=int, default=1000, help="test images (untimed)")
    parser.add_argument(
        "--steps", type=int, default=30, help="steps per timing of the floor (two are taken)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers of the textbook loop (default: the cores, at most 8)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/throughput.csv"), help="CSV file"
    )
    args = parser.parse_args()
    overrides = [
        *args.set,
        f"data.train_subset={args.images}",
        f"data.test_subset={args.test_images}",
        f"data.workers={args.workers}",
        "train.epochs=3",
        "train.vshift_sample=0",  # pure training speed: no diagnostics
        "train.recalibrate_bn=false",
    ]
    config = load_config(args.config, overrides)
    scheme = args.scheme or next(iter(config.schemes))
    if scheme not in config.schemes:
        parser.error(f"--scheme {scheme}: the config has {', '.join(config.schemes)}")
    device = resolve_device(config.device)
    textbook_config = config.model_copy(
        update={"data": config.data.model_copy(update={"pipeline": "torchvision"})}
    )
    eager = {"precision": "fp32", "channels_last": False, "compile": False}

    trainer = trainer_for(config, scheme, device)
    figures = {"trainer": epoch_throughput(trainer)}
    options = trainer.options
    # the floors before the textbook loop, whose worker processes would disturb them
    floor_eager = floor_throughput(trainer_for(config, scheme, device, **eager), args.steps)
    floor_same = floor_throughput(trainer_for(config, scheme, device), args.steps)
    textbook = trainer_for(textbook_config, scheme, device, **eager)
    loaded = textbook.train_loader.dataset
    dataset = type(getattr(loaded, "dataset", loaded)).__name__  # a Subset's, where a subset
    figures["textbook"] = epoch_throughput(textbook)
    figures["textbook_same"] = epoch_throughput(trainer_for(textbook_config, scheme, device))
    figures["floor_eager"], figures["floor_same"] = floor_eager, floor_same

    where = provenance(device)
    row = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": where["device_name"],
        "torch": where["torch"],
        "threads": torch.get_num_threads(),
        "workers": config.data.workers,
        "textbook_dataset": dataset,
        "config": str(args.config),
        "arch": config.model.arch,
        "widths": "-".join(map(str, config.model.widths)),
        "scheme": scheme,
        "batch_size": config.train.batch_size,
        "images": args.images,
        "precision": options["precision"],
        "channels_last": options["channels_last"],
        "compile": options["compile"],
        "first_step_seconds": round(options["first_step_seconds"], 3),
        **{f"{name}_images_per_second": round(value, 1) for name, value in figures.items()},
        "trainer_over_textbook": round(figures["trainer"] / figures["textbook"], 3),
        "trainer_over_textbook_same": round(figures["trainer"] / figures["textbook_same"], 3),
        "trainer_over_floor_eager": round(figures["trainer"] / figures["floor_eager"], 3),
        "trainer_over_floor_same": round(figures["trainer"] / figures["floor_same"], 3),
    }
    print(
        f"{row['device']}, torch {row['torch']}, {row['threads']} threads; {row['arch']} "
        f"{row['widths']}, scheme {scheme}, batch {row['batch_size']}, trainer options: "
        f"{row['precision']}, channels_last={row['channels_last']}, compile={row['compile']}"
    )
    labels = {
        "trainer": "(a) trainer",
        "textbook": f"(b) textbook loop ({dataset}, {row['workers']} workers)",
        "textbook_same": "    textbook data path, trainer's options",
        "floor_eager": "(c) compute floor, eager fp32 NCHW",
        "floor_same": "    compute floor, trainer's options",
    }
    for name, label in labels.items():
        print(f"{label:<42} {figures[name]:>9.1f} images/s")
    print(
        f"a/b = {row['trainer_over_textbook']:.2f} ({row['trainer_over_textbook_same']:.2f} "
        "with the same options)   "
        f"a/c (eager floor) = {row['trainer_over_floor_eager']:.2f}   "
        f"a/c (same options) = {row['trainer_over_floor_same']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
