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

The script reads in phases, one function each, in the order ``benchmark`` runs them: parse
arguments → build config → time the trainer (a) → time the compute floors (c), before any
DataLoader worker starts → time the textbook loop (b) → assemble the CSV row → print →
append to the CSV file.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import torch

from bnorder.data.catalog import DataError
from bnorder.runs.config import ConfigError, ExperimentConfig, load_config
from bnorder.runs.plan import plan_runs
from bnorder.runs.records import provenance
from bnorder.runs.runloop import ProcessCache, new_trainer
from bnorder.runs.train import Trainer, configure_process, resolve_device

# the textbook loop's options, and those of the eager floor
EAGER = {"precision": "fp32", "channels_last": False, "compile": False}


def main() -> None:
    try:
        benchmark()
    except (ConfigError, DataError, OSError) as err:
        raise SystemExit(f"error: {err}") from None


def benchmark(argv: list[str] | None = None) -> None:
    """The phases, in order; each is one function below."""
    parser = make_parser()
    args = parser.parse_args(argv)
    bench = build_bench(args, parser.error)
    figure, speed = time_trainer(bench)  # (a)
    floors = time_floors(bench)  # (c): before (b) starts any worker process
    textbook, dataset = time_textbook(bench)  # (b)
    figures = {"trainer": figure, **textbook, **floors}  # columns: (a), (b), (c)
    row = assemble_row(bench, figures, speed, dataset)
    print_report(row, figures)
    append_csv(args.out, row)


# ---------------------------------------------------------------- parse arguments


def make_parser() -> argparse.ArgumentParser:
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
    return parser


# ---------------------------------------------------------------- build config


@dataclass(frozen=True)
class Bench:
    """What every phase shares: the arguments, the configs, the scheme and the device."""

    args: argparse.Namespace
    config: ExperimentConfig  # the trainer's, as the config file and overrides set it
    textbook_config: ExperimentConfig  # the same, read through the torchvision pipeline
    scheme: str
    device: torch.device
    cache: ProcessCache = field(default_factory=ProcessCache)  # data, once per data config


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        *args.set,
        f"data.train_subset={args.images}",
        f"data.test_subset={args.test_images}",
        f"data.workers={args.workers}",
        "train.epochs=3",
        "train.vshift_sample=0",  # pure training speed: no diagnostics
        "train.recalibrate_bn=false",
    ]


def build_bench(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> Bench:
    """The configs, scheme and device; sets the process's threads and cuDNN once."""
    config = load_config(args.config, overrides(args))
    scheme = args.scheme or next(iter(config.schemes))
    if scheme not in config.schemes:
        error(f"--scheme {scheme}: the config has {', '.join(config.schemes)}")
    device = resolve_device(config.device)
    configure_process(config.train, device)
    textbook_config = config.model_copy(
        update={"data": config.data.model_copy(update={"pipeline": "torchvision"})}
    )
    return Bench(args, config, textbook_config, scheme, device)


def trainer_for(bench: Bench, config: ExperimentConfig, **train: Any) -> Trainer:
    """A fresh Trainer of the scheme, with ``config``'s train keys replaced by ``train``."""
    config = config.model_copy(update={"train": config.train.model_copy(update=train)})
    one = {"seeds": [0], "schemes": {bench.scheme: config.schemes[bench.scheme]}}
    run = plan_runs(config.model_copy(update=one))[0]
    return new_trainer(config, run, bench.cache.data_of(config), bench.device)


# ---------------------------------------------------------------- time the trainer (a)


def epoch_throughput(trainer: Trainer) -> float:
    """Training images/s: the better of the second and third epochs (the first warms up, and
    on a shared machine the better of two is the less disturbed)."""
    trainer.run_epoch()
    return max(trainer.run_epoch().images_per_second for _ in range(2))


def time_trainer(bench: Bench) -> tuple[float, dict[str, Any]]:
    """(a) images/s, and the trainer's speed record (its options, and its first step's time)."""
    trainer = trainer_for(bench, bench.config)
    return epoch_throughput(trainer), trainer.speed_record


# ---------------------------------------------------------------- time the compute floors (c)


def floor_throughput(trainer: Trainer, steps: int) -> float:
    """Images/s of ``steps`` optimiser steps on one batch that is already on the device."""
    images, labels = next(iter(trainer.train_loader.epoch(1)))
    trainer.runtime_model.train()

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


def time_floors(bench: Bench) -> dict[str, float]:
    """(c), eager and with the trainer's options: taken before the textbook loop, whose
    worker processes would disturb them."""
    steps = bench.args.steps
    floor_eager = floor_throughput(trainer_for(bench, bench.config, **EAGER), steps)
    floor_same = floor_throughput(trainer_for(bench, bench.config), steps)
    return {"floor_eager": floor_eager, "floor_same": floor_same}


# ---------------------------------------------------------------- time the textbook loop (b)


def time_textbook(bench: Bench) -> tuple[dict[str, float], str]:
    """(b) images/s, eager fp32 NCHW and with the trainer's options; and the class name of
    the torchvision dataset it reads."""
    textbook = trainer_for(bench, bench.textbook_config, **EAGER)
    loaded = textbook.train_loader.dataset
    dataset = type(getattr(loaded, "dataset", loaded)).__name__  # a Subset's, where a subset
    figures = {"textbook": epoch_throughput(textbook)}
    figures["textbook_same"] = epoch_throughput(trainer_for(bench, bench.textbook_config))
    return figures, dataset


# ---------------------------------------------------------------- assemble the CSV row


def assemble_row(
    bench: Bench, figures: dict[str, float], speed: dict[str, Any], dataset: str
) -> dict[str, Any]:
    """The CSV row: where and on what, the trainer's options, images/s and the ratios."""
    config, where = bench.config, provenance(bench.device)
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": where.device_name,
        "torch": where.torch,
        "threads": torch.get_num_threads(),
        "workers": config.data.workers,
        "textbook_dataset": dataset,
        "config": str(bench.args.config),
        "arch": config.model.arch,
        "widths": "-".join(map(str, config.model.widths)),
        "scheme": bench.scheme,
        "batch_size": config.train.batch_size,
        "images": bench.args.images,
        "precision": speed["precision"],
        "channels_last": speed["channels_last"],
        "compile": speed["compile"],
        "first_step_seconds": round(speed["first_step_seconds"], 3),
        **{f"{name}_images_per_second": round(value, 1) for name, value in figures.items()},
        "trainer_over_textbook": round(figures["trainer"] / figures["textbook"], 3),
        "trainer_over_textbook_same": round(figures["trainer"] / figures["textbook_same"], 3),
        "trainer_over_floor_eager": round(figures["trainer"] / figures["floor_eager"], 3),
        "trainer_over_floor_same": round(figures["trainer"] / figures["floor_same"], 3),
    }


# ---------------------------------------------------------------- print


def print_report(row: dict[str, Any], figures: dict[str, float]) -> None:
    print(
        f"{row['device']}, torch {row['torch']}, {row['threads']} threads; {row['arch']} "
        f"{row['widths']}, scheme {row['scheme']}, batch {row['batch_size']}, trainer options: "
        f"{row['precision']}, channels_last={row['channels_last']}, compile={row['compile']}"
    )
    labels = {
        "trainer": "(a) trainer",
        "textbook": f"(b) textbook loop ({row['textbook_dataset']}, {row['workers']} workers)",
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


# ---------------------------------------------------------------- append CSV


def append_csv(out: Path, row: dict[str, Any]) -> None:
    """Append ``row``, with a header where the file is new."""
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
