"""How bnorder's commands scale with the size of a results folder.

Fabricates a sweep of RUNS finished runs (5 schemes × a 10 × 10 grid × 10 seeds = 5,000 by
default) on a tiny fake CIFAR-10: one run is trained for real, the others are copies of it
with their own scheme, seed, grid point and identity, as ``bnorder run`` would have written
them. Then times, each as a fresh process: ``plan``, ``validate``, ``compare``, ``run`` with
every run done (a resume that finds nothing to do) and ``run`` with one run's record removed
(a resume that trains one run). Prints one line per command; nothing is kept unless --keep.

    python benchmarks/scale.py [--seeds 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bnorder.runs.config import load_config
from bnorder.runs.folder import METRICS_FILE, RUN_FILE, RunFolder
from bnorder.runs.plan import (
    config_identity,
    experiment_identity,
    fingerprint,
    make_plan,
    run_config,
    run_identity,
)

SCHEMES = ["bn_relu_drop", "relu_drop_bn", "drop_bn_relu", "relu_bn_drop", "drop_head"]
GRID = {
    "model.dropout": [round(0.05 * i, 2) for i in range(1, 11)],
    "train.lr": [round(0.01 * i, 2) for i in range(1, 11)],
}


def fake_cifar(root: Path, per_class: int = 2) -> Path:
    """torchvision's cifar-10-batches-py layout, of random 32×32 images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, count: int) -> None:
        labels = [i % 10 for i in range(count)]
        data = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"labels": labels, "data": data}))

    for i in range(1, 6):
        dump(f"data_batch_{i}", 10 * per_class)
    dump("test_batch", 10 * per_class)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    return root


def write_config(path: Path, data: Path, output: Path, seeds: int, grid: bool) -> Path:
    config = {
        "data": {"root": str(data)},
        "model": {"widths": [4], "convs_per_stage": 1, "dropout": 0.05},
        "schemes": SCHEMES if grid else SCHEMES[:1],
        "train": {"epochs": 1, "batch_size": 20, "vshift_sample": 20, "lr": 0.01},
        "seeds": list(range(seeds)) if grid else [0],
        "device": "cpu",
        "output": str(output),
        **({"grid": GRID} if grid else {}),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bnorder(*args: object) -> float:
    """Seconds one bnorder command takes, as a fresh process (imports included)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bnorder", *map(str, args)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"bnorder {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def fabricate(config_path: Path, template: Path) -> int:
    """Every run of the sweep, as a copy of the template run with its own names and hashes."""
    info = json.loads((template / RUN_FILE).read_text())
    metrics = (template / METRICS_FILE).read_text().splitlines()
    header, rows = metrics[0].split(","), [line.split(",") for line in metrics[1:]]
    plan = make_plan(load_config(config_path))
    for run in plan.runs:
        point = plan.configs[run.label]
        resolved = run_config(point, run)
        identity = config_identity(resolved, "cpu")
        record = {**info, "name": run.name, "scheme": run.scheme, "seed": run.seed}
        record.update(ops=list(run.order.ops), head=list(run.order.head), grid=run.grid_values)
        record.update(config=resolved, config_hash=fingerprint(run_identity(resolved, "cpu")))
        record["experiment_hash"] = fingerprint(experiment_identity(identity))
        folder = RunFolder.of(point.output, run.scheme, run.seed).path
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_FILE).write_text(json.dumps(record, indent=2))
        # as the run loop writes it: scheme, seed, the grid point's values, then the figures
        lines = [",".join([*header[:2], *run.grid_values, *header[2:]])]
        values = [str(v) for v in run.grid_values.values()]
        lines += [",".join([run.scheme, str(run.seed), *values, *row[2:]]) for row in rows]
        (folder / METRICS_FILE).write_text("\n".join(lines) + "\n")
    return len(plan.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per scheme and grid point")
    parser.add_argument("--keep", type=Path, help="build the folder here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bnorder-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    data = fake_cifar(root / "data")
    template = write_config(root / "template.yaml", data, root / "template", 1, grid=False)
    bnorder("run", template)
    sweep = write_config(root / "sweep.yaml", data, root / "results", args.seeds, grid=True)
    started = time.perf_counter()
    runs = fabricate(sweep, root / "template" / SCHEMES[0] / "seed0")
    print(f"{runs:,} runs fabricated in {time.perf_counter() - started:.1f} s under {root}")
    timings = {
        "plan": bnorder("plan", sweep),
        "validate": bnorder("validate", sweep),
        "compare": bnorder("compare", root / "results"),
        "run, all done": bnorder("run", sweep),
    }
    last = next((root / "results").glob(f"*/{SCHEMES[-1]}/seed0/{RUN_FILE}"))
    last.unlink()
    timings["run, one run left"] = bnorder("run", sweep)
    for command, seconds in timings.items():
        print(f"{command:>20}: {seconds:6.1f} s on {runs:,} runs")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
