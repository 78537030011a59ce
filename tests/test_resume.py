"""Never lose a run: kill -9 and resume, damaged checkpoints, divergence, failures, Ctrl-C,
two processes on one folder, and damaged files under compare."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    full_disk_writing,
    interrupt_after,
    invoke,
    tiny_config,
    write_pickle_layout,
)

TIMING = ["epoch_seconds", "images_per_second"]


def metrics(out: Path, scheme: str = "bn_relu_drop", seed: int = 0) -> pd.DataFrame:
    return pd.read_csv(out / scheme / f"seed{seed}" / "metrics.csv").drop(columns=TIMING)


def run_info(out: Path, scheme: str = "bn_relu_drop", seed: int = 0) -> dict:
    return json.loads((out / scheme / f"seed{seed}" / "run.json").read_text())


@pytest.fixture
def slow_root(tmp_path: Path) -> Path:
    """Enough images that an epoch takes a few tenths of a second: room to kill mid-epoch."""
    return write_pickle_layout(tmp_path / "cifar", train_per_class=60, test_per_class=10)


@pytest.fixture
def config(tmp_path: Path, pickle_root: Path) -> Path:
    return tiny_config(
        tmp_path,
        pickle_root,
        schemes={"bn_relu_drop": ["bn", "act", "dropout"]},
        train={"epochs": 4, "batch_size": 25},
    )


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, slow_root: Path
) -> None:
    config = tiny_config(
        tmp_path,
        slow_root,
        schemes={"bn_relu_drop": ["bn", "act", "dropout"]},
        train={"epochs": 3, "batch_size": 50},
    )
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert invoke("run", config, "--out", reference).exit_code == 0

    command = [sys.executable, "-m", "bnorder", "run", str(config), "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_file = killed / "bn_relu_drop" / "seed0" / "run.json"

    def epochs_done() -> int:
        try:
            return json.loads(run_file.read_text())["epochs_completed"]
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.monotonic() + 120
    while epochs_done() < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # somewhere in epoch 2, with no chance to clean up
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    left = run_info(killed)
    assert left["status"] == "running" and left["epochs_completed"] >= 1
    pd.read_csv(killed / "bn_relu_drop" / "seed0" / "metrics.csv")  # parses, whatever the instant

    again = invoke("run", config, "--out", killed)
    assert again.exit_code == 0, again.output
    assert "resuming bn_relu_drop/seed0 after epoch" in again.output
    info = run_info(killed)
    assert info["status"] == "completed" and info["resumed_from_epoch"] >= 1
    pd.testing.assert_frame_equal(metrics(killed), metrics(reference), check_exact=True)
    shifts = [
        pd.read_csv(o / "bn_relu_drop" / "seed0" / "variance_shift.csv")
        for o in (killed, reference)
    ]
    pd.testing.assert_frame_equal(*shifts, check_exact=True)


def test_ctrl_c_marks_interrupted_and_the_same_command_resumes(
    tmp_path: Path, config: Path, monkeypatch
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert invoke("run", config, "--out", reference).exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        stopped = invoke("run", config, "--out", out)
    assert stopped.exit_code == 130
    assert "bn_relu_drop/seed0 marked interrupted" in stopped.output
    assert "Rerun the same command to resume" in stopped.output
    info = run_info(out)
    assert info["status"] == "interrupted" and info["epochs_completed"] == 2
    assert len(pd.read_csv(out / "bn_relu_drop" / "seed0" / "metrics.csv")) == 2
    resumed = invoke("run", config, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    assert run_info(out)["resumed_from_epoch"] == 2
    pd.testing.assert_frame_equal(metrics(out), metrics(reference), check_exact=True)


def test_sigterm_marks_the_run_interrupted(tmp_path: Path, slow_root: Path) -> None:
    config = tiny_config(
        tmp_path,
        slow_root,
        schemes={"bn_relu_drop": ["bn", "act", "dropout"]},
        train={"epochs": 3, "batch_size": 50},
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bnorder", "run", str(config), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_file = out / "bn_relu_drop" / "seed0" / "run.json"
    deadline = time.monotonic() + 120
    while not run_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # what Slurm and pre-emption send
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Rerun the same command to resume" in output
    assert json.loads(run_file.read_text())["status"] == "interrupted"


@pytest.mark.parametrize(
    ("keep", "resumed_from"),
    [("all", 2), ("last", None), ("none", None)],
    ids=["keep-all", "keep-last", "keep-none"],
)
def test_truncated_checkpoint_falls_back_or_restarts(
    tmp_path: Path, config: Path, monkeypatch, keep: str, resumed_from: int | None
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    keep_set = f"train.keep_checkpoints={keep}"
    assert invoke("run", config, "--out", reference, "--set", keep_set).exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert invoke("run", config, "--out", out, "--set", keep_set).exit_code == 130
    folder = out / "bn_relu_drop" / "seed0"
    newest = folder / ("checkpoint-epoch3.pt" if keep == "all" else "checkpoint.pt")
    newest.write_bytes(newest.read_bytes()[:100])  # truncated on purpose
    again = invoke("run", config, "--out", out, "--set", keep_set)
    assert again.exit_code == 0, again.output
    info = run_info(out)
    assert info["resumed_from_epoch"] == resumed_from
    assert any(f"{newest.name} unreadable" in note for note in info["notes"])
    pd.testing.assert_frame_equal(metrics(out), metrics(reference), check_exact=True)


def test_keep_none_still_resumes_from_its_checkpoint(
    tmp_path: Path, config: Path, monkeypatch
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    keep_set = "train.keep_checkpoints=none"
    assert invoke("run", config, "--out", reference, "--set", keep_set).exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert invoke("run", config, "--out", out, "--set", keep_set).exit_code == 130
    assert invoke("run", config, "--out", out, "--set", keep_set).exit_code == 0
    assert run_info(out)["resumed_from_epoch"] == 2
    assert not list((out / "bn_relu_drop" / "seed0").glob("*.pt"))  # gone once completed
    pd.testing.assert_frame_equal(metrics(out), metrics(reference), check_exact=True)


def test_resume_needs_neither_run_json_nor_metrics_csv_intact(
    tmp_path: Path, config: Path, monkeypatch
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert invoke("run", config, "--out", reference).exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert invoke("run", config, "--out", out).exit_code == 130
    folder = out / "bn_relu_drop" / "seed0"
    (folder / "run.json").write_text("{trunc")
    (folder / "metrics.csv").write_text("scheme,seed,ep")
    assert invoke("run", config, "--out", out).exit_code == 0
    assert run_info(out)["resumed_from_epoch"] == 2  # the checkpoint carries rows and identity
    pd.testing.assert_frame_equal(metrics(out), metrics(reference), check_exact=True)


def test_keep_checkpoints_settings(tmp_path: Path, config: Path) -> None:
    found = {}
    for keep in ("last", "none", "all"):
        out = tmp_path / keep
        assert (
            invoke("run", config, "--out", out, "--set", f"train.keep_checkpoints={keep}").exit_code
            == 0
        )
        found[keep] = sorted(p.name for p in (out / "bn_relu_drop" / "seed0").glob("*.pt"))
    assert found == {
        "last": ["checkpoint.pt"],
        "none": [],
        "all": [f"checkpoint-epoch{e}.pt" for e in range(1, 5)],  # 4 epochs
    }


def test_checkpoint_is_loadable_with_weights_only(tmp_path: Path, config: Path) -> None:
    import torch

    assert invoke("run", config, "--out", tmp_path / "out").exit_code == 0
    state = torch.load(
        tmp_path / "out" / "bn_relu_drop" / "seed0" / "checkpoint.pt", weights_only=True
    )
    assert state["epoch"] == 4 and {"model", "optimizer", "scheduler", "rng"} <= set(state)


def test_nan_loss_marks_the_run_diverged_and_the_sweep_goes_on(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    import torch

    from bnorder.runs.train import Trainer

    original = Trainer.run_epoch

    def poisoned(self, on_step=None):
        if self.epoch == 1 and self.model.scheme == ("act",):
            self.criterion = lambda logits, labels: torch.tensor(float("nan"), requires_grad=True)
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "run_epoch", poisoned)
    config = tiny_config(
        tmp_path, pickle_root, schemes={"plain": ["act"], "bn_only": ["bn", "act"]}
    )
    out = tmp_path / "results"
    result = invoke("run", config)
    assert result.exit_code == 1
    assert "1 completed, 0 already done, 1 failed" in result.output
    info = run_info(out, "plain")
    assert info["status"] == "diverged" and "nan in epoch 2" in info["error"]
    assert info["epochs_completed"] == 1
    assert run_info(out, "bn_only")["status"] == "completed"
    again = invoke("run", config)  # a diverged run is final, like a completed one
    assert again.exit_code == 0 and "2 already done" in again.output


def test_an_exception_in_one_run_of_three(tmp_path: Path, pickle_root: Path, monkeypatch) -> None:
    from bnorder.runs.network import NetworkSpec

    original = NetworkSpec.build

    def broken(spec: NetworkSpec, seed: int = 0):
        if spec.scheme.ops == ("act", "dropout", "bn"):
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(spec, seed)

    monkeypatch.setattr(NetworkSpec, "build", broken)
    config = tiny_config(tmp_path, pickle_root, train={"epochs": 1})
    out = tmp_path / "results"
    result = invoke("run", config)
    assert result.exit_code == 1
    assert "2 completed, 0 already done, 1 failed" in result.output
    assert "relu_drop_bn/seed0: failed: RuntimeError: CUDA out of memory (simulated)" in (
        result.output
    )
    info = run_info(out, "relu_drop_bn")
    assert info["status"] == "failed" and "Traceback" in info["traceback"]
    assert run_info(out, "bn_only")["status"] == "completed"  # the run after it still ran

    fast = invoke("run", config, "--out", tmp_path / "fast", "--fail-fast")
    assert fast.exit_code == 1 and "1 not started (--fail-fast)" in fast.output
    assert not (tmp_path / "fast" / "bn_only").exists()


def test_two_processes_on_one_folder_train_each_run_once(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(
        tmp_path,
        pickle_root,
        schemes={"a": ["bn", "act"], "b": ["act", "bn"], "c": ["act"]},
        seeds=[0, 1],
        train={"epochs": 2, "batch_size": 25},
    )
    command = [sys.executable, "-m", "bnorder", "run", str(config)]
    env = {**os.environ, "COLUMNS": "200"}
    first, second = (
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for _ in range(2)
    )
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trained = sum(int(re.search(r"(\d+) completed", o)[1]) for o in outputs)
    assert trained == 6, outputs  # every run trained exactly once between the two
    out = tmp_path / "results"
    for scheme in "abc":
        for seed in (0, 1):
            info = run_info(out, scheme, seed)
            assert info["status"] == "completed" and info["resumed_from_epoch"] is None
            assert len(metrics(out, scheme, seed)) == 2


def test_compare_skips_damaged_files_by_path(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config, "--seeds", "0,1,2", "--set", "train.epochs=2").exit_code == 0
    truncated = out / "bn_relu_drop" / "seed1" / "metrics.csv"
    truncated.write_text(truncated.read_text()[:-30])  # the last line cut short
    (out / "bn_relu_drop" / "seed2" / "run.json").write_text('{"scheme": "bn_relu_drop"')
    foreign = out / "notes" / "seed0"
    foreign.mkdir(parents=True)
    (foreign / "run.json").write_text('{"hello": "world"}')
    odd = out / "odd" / "seed0"
    odd.mkdir(parents=True)
    (odd / "run.json").write_text('{"scheme": ["x"], "seed": "0", "status": 5}')
    short = out / "relu" / "seed0"
    short.parent.mkdir()
    import shutil

    shutil.copytree(out / "bn_relu_drop" / "seed0", short)
    lines = (short / "metrics.csv").read_text().splitlines(keepends=True)
    (short / "metrics.csv").write_text("".join(lines[:-1]))  # cut at a line boundary
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    assert f"{truncated}: unreadable metrics" in result.output
    assert "seed2/run.json: unreadable run file" in result.output
    assert "notes/seed0/run.json: unreadable run file" in result.output
    assert "odd/seed0/run.json: unreadable run file" in result.output
    assert "1 epochs of a completed 2-epoch run" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "runs"] == 1  # only seed0 is averaged
    assert summary.loc[0, "final_test_acc_mean"] == metrics(out)["test_acc"].iloc[-1]


def test_provenance_takes_no_git_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """git status, run for the revision, must not take the repository's index.lock from under
    the user's own git commands."""
    import subprocess

    from bnorder.runs import records as results

    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="abc\n", stderr="")

    monkeypatch.setattr(results.subprocess, "run", fake_run)
    assert results._git_revision() == "abc-dirty"
    assert all(command[:2] == ["git", "--no-optional-locks"] for command in commands)


def test_a_full_disk_fails_the_run_by_name_and_leaves_no_debris(
    tmp_path: Path, pickle_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while a checkpoint is written: the run is marked failed with "no space
    left on device writing PATH" (it was torch's "unexpected pos"), no temporary file stays,
    and the same command afterwards trains it, clearing what a killed writer left."""
    config = tiny_config(tmp_path, pickle_root, schemes={"bn_only": ["bn", "act"]})
    with monkeypatch.context() as patch:
        full_disk_writing(patch, "checkpoint")
        result = invoke("run", config)
    folder = tmp_path / "results" / "bn_only" / "seed0"
    info = json.loads((folder / "run.json").read_text())
    assert result.exit_code == 1 and info["status"] == "failed"
    assert info["error"] == f"no space left on device writing {folder / 'checkpoint.pt'}"
    assert not list(tmp_path.rglob("*.partial"))
    (folder / ".checkpoint.pt.0123456789ab.partial").write_bytes(b"half")  # a killed writer's
    assert invoke("run", config).exit_code == 0
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert not list(tmp_path.rglob("*.partial"))
