"""Spreading a sweep: shards (--shard, Slurm arrays, ``bnorder plan``) and local worker
processes (--workers). The Ray executor has its own file."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import os
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import invoke, tiny_config

from bnorder.runs.config import ConfigError, build_config, load_config
from bnorder.runs.events import RunEnded, RunStarted, ignore
from bnorder.runs.plan import Shard, SweepOptions, make_plan, plan_runs, shard_runs
from bnorder.runs.runloop import Job
from bnorder.runs.workers import LocalWorkers, local_devices

TIMING = ("epoch_seconds", "images_per_second")  # the only columns allowed to differ


def run_key(run) -> tuple:
    """A run by what names it, whatever the order of the config's keys."""
    return (tuple(sorted(run.grid_values.items())), run.scheme, run.seed)


GRID_CONFIG = {
    "data": {"root": "unused", "download": True},
    "model": {"widths": [4, 8], "convs_per_stage": 1, "hidden": [8], "dropout": 0.2},
    "schemes": ["bn_relu_drop", "relu_drop_bn", "bn_only"],
    "train": {"epochs": 1, "batch_size": 32},
    "grid": {"model.dropout": [0.1, 0.3], "train.lr": [0.05, 0.1]},
    "seeds": [0, 1, 2],
    "device": "cpu",
}


def grid_plan(tmp_path: Path, raw: dict, name: str = "config.yaml", shard: Shard | None = None):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**raw, "output": str(tmp_path / "out")}, sort_keys=False))
    return make_plan(load_config(path), options=SweepOptions(shard=shard))


# ---------------------------------------------------------------- shards


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 36, 40])
def test_shards_cover_the_plan_once_and_evenly(tmp_path, count):
    # 2 schemes × 4 grid points × 3 seeds, and bn_only, which reads no dropout, at 2 lr × 3 seeds
    whole = grid_plan(tmp_path, GRID_CONFIG).runs
    assert len(whole) == 30
    parts = [shard_runs(whole, Shard(k, count)) for k in range(count)]
    assert sorted(map(run_key, itertools.chain(*parts))) == sorted(
        map(run_key, whole)
    )  # no run twice
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    for part in parts:  # each part keeps the plan's seed-major order
        assert part == [run for run in whole if run in set(part)]


def test_shards_do_not_depend_on_the_order_of_the_config(tmp_path):
    """Sections, keys within them, schemes, seeds, grid keys and grid values reordered: every
    shard holds the same runs (compared by grid values, scheme and seed: the grid's folder
    label follows its key order)."""
    shuffled = {
        "seeds": [2, 0, 1],
        "grid": {"train.lr": [0.1, 0.05], "model.dropout": [0.3, 0.1]},
        "device": "cpu",
        "train": {"batch_size": 32, "epochs": 1},
        "schemes": ["bn_only", "bn_relu_drop", "relu_drop_bn"],
        "model": {"dropout": 0.2, "hidden": [8], "convs_per_stage": 1, "widths": [4, 8]},
        "data": {"download": True, "root": "unused"},
    }
    for k in range(4):
        first = grid_plan(tmp_path, GRID_CONFIG, "a.yaml", Shard(k, 4)).runs
        second = grid_plan(tmp_path, shuffled, "b.yaml", Shard(k, 4)).runs
        assert sorted(map(run_key, first)) == sorted(map(run_key, second))


def test_a_shard_mixes_schemes():
    """Runs of one scheme cost alike: shards dealt by plan position would give one shard all
    the expensive runs when N equals the number of schemes."""
    built = build_config(
        {"schemes": ["bn_relu_drop", "relu_drop_bn", "bn_only"], "seeds": list(range(10))},
        source="test",
    )
    runs = plan_runs(built)
    for k in range(3):
        assert len({run.scheme for run in shard_runs(runs, Shard(k, 3))}) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [("4/4", "K counts from 0"), ("1/0", "K counts from 0"), ("a/b", "is not K/N"), ("2", "K/N")],
)
def test_bad_shards_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        Shard.parse(text)


def test_slurm_array_tasks_map_onto_shards():
    def env(task, count, first=None, step=None):
        values = {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": count}
        values |= {"SLURM_ARRAY_TASK_MIN": first} if first is not None else {}
        values |= {"SLURM_ARRAY_TASK_STEP": step} if step is not None else {}
        return {k: str(v) for k, v in values.items()}

    assert Shard.from_slurm({}) is None
    assert Shard.from_slurm(env(3, 4, 0)) == Shard(3, 4)
    assert Shard.from_slurm(env(1, 4, 1)) == Shard(0, 4)  # --array=1-4
    assert Shard.from_slurm(env(10, 4, 4, 2)) == Shard(3, 4)  # --array=4-10:2
    assert Shard.from_slurm(env(5, 3, 1, 2)) == Shard(2, 3)  # --array=1-5:2
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=4"):
        Shard.from_slurm(env(4, 3, 1, 2))  # not on the step
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=4"):
        Shard.from_slurm(env(4, 3, 1))  # a list like --array=1,2,4
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK"):
        Shard.from_slurm({"SLURM_ARRAY_TASK_ID": "2"})


def plan_lines(output: str) -> list[str]:
    return [line.split(maxsplit=1)[1] for line in output.splitlines() if line.startswith("to do")]


def test_plan_prints_each_shards_runs(tmp_path, pickle_root):
    config = tiny_config(tmp_path, pickle_root, seeds=[0, 1, 2])
    whole = invoke("plan", config)
    assert whole.exit_code == 0, whole.output
    assert "9 of 9 runs on cpu, 0 done, 9 to do" in whole.output
    parts = []
    for k in range(3):
        result = invoke("plan", config, "--shard", f"{k}/3")
        assert result.exit_code == 0, result.output
        assert f"shard {k}/3: 3 of 9 runs" in result.output
        parts += plan_lines(result.output)
    assert sorted(parts) == sorted(plan_lines(whole.output))
    slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    from_env = invoke("plan", config, env=slurm)
    assert "shard 2/3" in from_env.output
    assert plan_lines(from_env.output) == plan_lines(
        invoke("plan", config, "--shard", "2/3").output
    )
    # --shard wins over the environment; a bad shard is one line and exit code 2
    assert "shard 0/3" in invoke("plan", config, "--shard", "0/3", env=slurm).output
    bad = invoke("plan", config, "--shard", "3/3")
    assert bad.exit_code == 2 and "--shard" in bad.output


def test_plan_needs_neither_the_data_nor_the_device(tmp_path):
    """A login node has no GPU and may not see the data: plan lists the runs all the same."""
    config = tiny_config(tmp_path, tmp_path / "nowhere", device="cuda")
    result = invoke("plan", config, "--shard", "0/2")
    assert result.exit_code == 0, result.output
    assert "on cuda" in result.output and "not found here" in result.output


def metrics_of(output: Path) -> dict[str, pd.DataFrame]:
    return {
        str(path.parent.relative_to(output)): pd.read_csv(path)
        for path in sorted(output.rglob("metrics.csv"))
    }


def test_shards_into_one_folder_make_the_whole_sweep(tmp_path, pickle_root):
    """Two shards run one after another into one folder: the same runs and numbers as the
    sweep in one go; compare reads them as one experiment, and the plan shows all done."""
    config = tiny_config(tmp_path, pickle_root, seeds=[0, 1])
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert invoke("run", config, "--out", whole).exit_code == 0
    for k in range(2):
        result = invoke("run", config, "--out", sharded, "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
        assert f"shard {k}/2: 3 of the sweep's 6 runs" in result.output
    expected, got = metrics_of(whole), metrics_of(sharded)
    assert sorted(got) == sorted(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(
            got[name].drop(columns=list(TIMING)), frame.drop(columns=list(TIMING))
        )
    assert "6 of 6 runs on cpu, 6 done, 0 to do" in invoke("plan", config, "--out", sharded).output
    table = invoke("compare", sharded, "--format", "csv")
    assert table.exit_code == 0 and len(pd.read_csv(io.StringIO(table.output))) == 3


# ---------------------------------------------------------------- local workers


def test_workers_share_out_the_cores_and_the_devices(monkeypatch):
    monkeypatch.setattr("bnorder.runs.workers.available_cores", lambda: 8)
    assert LocalWorkers(3, [torch.device("cpu")]).threads == 2
    assert LocalWorkers(16, [torch.device("cpu")]).threads == 1
    assert LocalWorkers(2, [torch.device("cpu")], threads=3).threads == 3
    assert local_devices("cpu", None, 4) == [torch.device("cpu")]
    assert local_devices("auto", ["cpu", "cpu"], 2) == [torch.device("cpu")] * 2
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            local_devices("cpu", ["cuda:0", "cuda:1"], 2)
    monkeypatch.setattr("bnorder.runs.workers.resolve_device", torch.device)  # as if they exist
    assert local_devices("cpu", ["cuda:0", "cuda:1"], 4) == [
        torch.device("cuda", i) for i in (0, 1)
    ]
    with pytest.raises(ConfigError, match="--devices: cpu,cuda:0 mixes device types"):
        local_devices("cpu", ["cpu", "cuda:0"], 2)


def without_timing(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: frame.drop(columns=list(TIMING)) for name, frame in frames.items()}


def test_two_workers_give_the_runs_and_numbers_of_one(tmp_path, pickle_root):
    """--workers 2 on 2 cores gives each worker 1 thread: bit-equal to one process with 1
    thread; within float tolerance of one process with its default thread count."""
    config = tiny_config(tmp_path, pickle_root, seeds=[0, 1])
    one, two, default = tmp_path / "one", tmp_path / "two", tmp_path / "default"
    parallel = invoke("run", config, "--out", two, "--workers", "2", "--set", "train.threads=1")
    assert parallel.exit_code == 0, parallel.output
    assert "2 worker processes, 1 CPU thread each" in parallel.output
    assert "6 completed" in parallel.output
    assert invoke("run", config, "--out", one, "--set", "train.threads=1").exit_code == 0
    assert invoke("run", config, "--out", default).exit_code == 0
    reference = without_timing(metrics_of(one))
    got = without_timing(metrics_of(two))
    assert sorted(got) == sorted(reference) and len(got) == 6
    for name, frame in reference.items():
        pd.testing.assert_frame_equal(got[name], frame)
        info = json.loads((two / name / "run.json").read_text())
        assert info["status"] == "completed" and info["speed"]["threads"] == 1
    for name, frame in without_timing(metrics_of(default)).items():
        numbers = frame.select_dtypes("number").columns
        np.testing.assert_allclose(frame[numbers], reference[name][numbers], rtol=1e-2, atol=0.05)


def failing_config(tmp_path: Path, pickle_root: Path) -> Path:
    """Half the runs fail inside their worker: torchvision's own CIFAR10 refuses the fake
    pickles (their md5 is not CIFAR's), while the device pipeline reads them."""
    return tiny_config(
        tmp_path, pickle_root, grid={"data.pipeline": ["torchvision", "device"]}, seeds=[0]
    )


def test_failed_runs_in_workers_fail_alone_or_with_fail_fast_stop_the_sweep(tmp_path, pickle_root):
    """With --fail-fast the plan's first runs fail (one, or two where the second worker took a
    run before the first failed) and nothing starts after. Without it, the failed runs fail
    alone and the others complete."""
    config = failing_config(tmp_path, pickle_root)
    out = tmp_path / "out"
    result = invoke("run", config, "--out", out, "--workers", "2", "--fail-fast")
    assert result.exit_code == 1, result.output
    counts = re.search(r"0 completed, 0 already done, (\d) failed, (\d) not started", result.output)
    assert counts is not None, result.output
    assert int(counts[1]) in (1, 2) and int(counts[1]) + int(counts[2]) == 6
    assert not list(out.glob("pipeline=device/*/seed0"))
    result = invoke("run", config, "--out", out, "--workers", "2")
    assert result.exit_code == 1, result.output
    assert "3 completed, 0 already done, 3 failed" in result.output
    for folder in out.glob("pipeline=torchvision/*/seed0"):
        info = json.loads((folder / "run.json").read_text())
        assert info["status"] == "failed" and "refuses it" in info["error"]
    assert len(list(out.glob("pipeline=device/*/seed0/metrics.csv"))) == 3


class KillFirstWorker:
    """Kills worker 0 (SIGKILL: the out-of-memory killer, say) once two runs have started."""

    def __init__(self) -> None:
        self.started, self.ended = 0, {}

    def __call__(self, event):
        match event:
            case RunStarted():
                self.started += 1
                if self.started == 2:
                    (worker,) = [
                        p for p in multiprocessing.active_children() if p.name.endswith("-0")
                    ]
                    os.kill(worker.pid, signal.SIGKILL)
            case RunEnded(run, status, detail):
                self.ended[run.name] = (status, detail)


def test_a_killed_worker_fails_its_run_and_the_sweep_goes_on(tmp_path, pickle_root):
    small = {"seeds": [0, 1], "schemes": ["bn_relu_drop", "bn_only"], "train": {"epochs": 10}}
    config = load_config(tiny_config(tmp_path, pickle_root, **small))
    plan = make_plan(config)
    jobs = [Job(plan.configs[run.label], run) for run in plan.runs]
    watch = KillFirstWorker()
    results = list(LocalWorkers(2, [torch.device("cpu")]).run(jobs, watch, fail_fast=False))
    statuses = sorted(status for _, status, _ in results)
    assert statuses == ["completed"] * 3 + ["failed"]
    ((job, _, detail),) = [r for r in results if r[1] == "failed"]
    assert "worker process died (exit code -9)" in detail
    assert watch.ended[job.run.name] == ("failed", detail)
    # its folder says running, with the epochs it finished: the next sweep resumes it
    resumed = invoke("run", tiny_config(tmp_path, pickle_root, **small))
    assert resumed.exit_code == 0, resumed.output
    # resumed from its checkpoint where the kill came after its first epoch
    assert re.search(
        r"1 completed( \(1 resumed from a checkpoint\))?, 3 already done", resumed.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "ray", "--workers", "2"], "--workers/--devices: for --executor local"),
        (["--ray-address", "127.0.0.1:6379"], "only with --executor ray"),
        (["--workers", "0"], "--workers"),
        (["--shard", "2/2"], "--shard"),
    ],
)
def test_executor_options_that_do_not_fit_are_refused(tmp_path, pickle_root, args, message):
    result = invoke("run", tiny_config(tmp_path, pickle_root), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_workers_that_cannot_start_fail_the_runs_once(tmp_path, pickle_root):
    """A worker dealt a device it cannot use exits before it is ready: the runs fail with a
    line each, and no worker is started again and again."""
    config = load_config(tiny_config(tmp_path, pickle_root))
    plan = make_plan(config)
    jobs = [Job(plan.configs[run.label], run) for run in plan.runs]
    results = list(LocalWorkers(2, [torch.device("cuda:0")]).run(jobs, ignore, fail_fast=False))
    assert sorted(job.run.name for job, _, _ in results) == sorted(run.name for run in plan.runs)
    for _, status, detail in results:
        assert status == "failed" and "no worker process could start (exit code 1)" in detail


def test_sigterm_stops_the_workers_runs_and_the_same_command_resumes(tmp_path, pickle_root):
    """SIGTERM to the sweep's process only (as `kill` sends it): the workers' runs in progress
    are marked interrupted, exit code 130; the same command then finishes them. (On a loaded
    machine one run may finish before the other has its first checkpoint.)"""
    import subprocess
    import sys
    import time

    config = tiny_config(
        tmp_path, pickle_root, schemes=["bn_only"], seeds=[0, 1], train={"epochs": 40}
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bnorder", "run", str(config), "--out", str(out)]
    sweep = subprocess.Popen(
        [*command, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("bn_only/seed*/checkpoint*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    sweep.send_signal(signal.SIGTERM)
    output, errors = sweep.communicate(timeout=90)
    assert sweep.returncode == 130, output + errors
    assert "marked interrupted" in errors
    statuses = {}
    for seed in (0, 1):
        info = json.loads((out / f"bn_only/seed{seed}/run.json").read_text())
        statuses[seed] = info["status"]
        if info["status"] == "interrupted":
            assert 0 < info["epochs_completed"] < 40
            assert f"bn_only/seed{seed}" in errors  # named in the error line
        else:
            assert info["status"] == "completed"
    interrupted = [seed for seed, status in statuses.items() if status == "interrupted"]
    assert interrupted and not multiprocessing.active_children()
    finished = invoke("run", config, "--out", out)  # in this process: quicker to start
    assert finished.exit_code == 0, finished.output
    n = len(interrupted)  # each was resumed: the test asserts each one's epochs kept above
    assert f"{n} completed ({n} resumed from a checkpoint), {2 - n} already done" in finished.output
    for seed in interrupted:
        assert f"resuming bn_only/seed{seed}" in finished.output


def test_the_reference_study_plans_bn_only_once_per_seed() -> None:
    """configs/reference-cpu.yaml: bn_only reads no model.dropout, so its 3 seeds serve all 4
    rates (an older version trained it 12 times); its committed folder counts as done."""
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "reference-cpu.yaml")
    config = config.model_copy(update={"output": str(root / config.output)})
    plan = make_plan(config, locate=lambda r, d: ("tarball", Path(r)))
    schemes = [run.scheme for run in plan.runs]
    assert schemes.count("bn_only") == 3 and schemes.count("bn_relu_drop") == 12
    assert len(plan.runs) == 51 and plan.todo == []


def test_a_workers_later_signals_find_a_handler() -> None:
    """After the first Ctrl-C or SIGTERM a worker stops once; a later signal already caught
    when its handler changes must find a Python handler, not SIG_IGN: else Python prints
    "OSError: Signal 15 ignored due to race condition" with a traceback, where a
    single-process interrupt prints one line."""
    from bnorder.runs import workers

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt):
            workers._interrupt_once(signal.SIGINT, None)
        for s in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(s)
            assert callable(handler) and handler not in (signal.SIG_IGN, signal.SIG_DFL)
            handler(s, None)  # and it does nothing: no second KeyboardInterrupt
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
