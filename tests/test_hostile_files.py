"""Files that are not what their names say (issue 26, points 1 and 5): FIFOs, devices and
folders where bnorder reads a file, files far larger than their kind, and checkpoints whose
contents fail a check. Each is refused by name, never waited on or read without bound; a run
resumes from its newest valid checkpoint and ends as an uninterrupted run does."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import interrupt_after, invoke, tiny_config, write_pickle_layout

TIMING = ["epoch_seconds", "images_per_second"]
KEEP_ALL = "train.keep_checkpoints=all"


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened for reading waits for a writer) fails the test
    instead of hanging the suite."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("blocked: a read waited on a file that never ends")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv").drop(columns=TIMING)


# ---------------------------------------------------------------- the one bounded reader


def test_the_bounded_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    from bnorder.core.files import FileRefused, read_bounded

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "folder").mkdir()
    for name in ("fifo", "zero", "folder"):
        with pytest.raises(FileRefused, match=f"{name}: not a regular file"):
            read_bounded(tmp_path / name, 1024, "thing")
    with open(tmp_path / "large", "wb") as handle:
        handle.truncate(2**21)  # sparse: no disk used
    with pytest.raises(FileRefused, match="large: larger than 1 MiB, the most a thing can be"):
        read_bounded(tmp_path / "large", 2**20, "thing")
    (tmp_path / "fine").write_bytes(b"12")
    assert read_bounded(tmp_path / "fine", 2, "thing") == b"12"


def test_compare_and_report_name_hostile_csv_files_and_go_on(
    tmp_path: Path, pickle_root: Path
) -> None:
    config = tiny_config(tmp_path, pickle_root, schemes={"bn_only": ["bn", "act"]})
    out = tmp_path / "results"
    result = invoke("run", config, "--seeds", "0,1,2,3,4", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    runs = out / "bn_only"
    (runs / "seed1" / "metrics.csv").unlink()
    (runs / "seed1" / "metrics.csv").symlink_to("/dev/zero")
    (runs / "seed2" / "metrics.csv").unlink()
    os.mkfifo(runs / "seed2" / "metrics.csv")
    with open(runs / "seed3" / "metrics.csv", "r+b") as handle:
        handle.truncate(200 * 2**20)  # 200 MB, sparse
    (runs / "seed4" / "variance_shift.csv").unlink()
    os.mkfifo(runs / "seed4" / "variance_shift.csv")
    compared = invoke("compare", out)
    assert compared.exit_code == 0, compared.output
    for seed, why in ((1, "not a regular file"), (2, "not a regular file"), (3, "larger than")):
        assert f"{runs / f'seed{seed}' / 'metrics.csv'}: unreadable metrics" in compared.output
        assert why in compared.output
    assert f"{runs / 'seed4' / 'variance_shift.csv'}: unreadable" in compared.output
    assert pd.read_csv(out / "summary.csv").loc[0, "runs"] == 2  # seeds 0 and 4
    reported = invoke("report", out)
    assert reported.exit_code == 0, reported.output
    page = (out / "report.html").read_text()  # its "Runs left out" lists each by path
    for bad in ("seed1/metrics.csv", "seed2/metrics.csv", "seed3/metrics.csv"):
        assert f"{runs / bad}: unreadable metrics" in page
    assert f"{runs / 'seed4' / 'variance_shift.csv'}: unreadable" in page


def test_audit_refuses_weights_that_are_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n"
    )
    os.mkfifo(tmp_path / "weights.pt")
    (tmp_path / "folder.pt").mkdir()
    for weights in ("weights.pt", "folder.pt"):
        result = invoke("audit", f"{tmp_path / 'net.py'}:build", "--weights", tmp_path / weights)
        assert result.exit_code == 2, result.output
        assert f"{weights}: not a regular file" in result.output
        assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- checkpoints on resume


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(config, an uninterrupted run's folder, a folder stopped after epoch 3 of 4 that kept
    the checkpoints of epochs 1, 2 and 3), made once for the cases below."""
    base = tmp_path_factory.mktemp("interrupted")
    root = write_pickle_layout(base / "cifar")
    config = tiny_config(
        base, root, schemes={"bn_relu_drop": ["bn", "act", "dropout"]},
        train={"epochs": 4, "batch_size": 25},
    )  # fmt: skip
    reference, stopped = base / "reference", base / "stopped"
    assert invoke("run", config, "--out", reference, "--set", KEEP_ALL).exit_code == 0
    with pytest.MonkeyPatch.context() as patch:
        interrupt_after(patch, 3)
        assert invoke("run", config, "--out", stopped, "--set", KEEP_ALL).exit_code == 130
    return config, reference / "bn_relu_drop" / "seed0", stopped


def forged(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the checkpoint at a path with ``change`` applied to its contents."""

    def forge(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return forge


def first_weight(state: dict) -> str:
    return next(k for k, v in state["model"].items() if v.is_floating_point())


def replaced(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def replace(path: Path) -> None:
        path.unlink()
        make(path)

    return replace


DAMAGES = {
    "fifo": (replaced(os.mkfifo), "not a regular file"),
    "folder": (replaced(lambda p: (p.mkdir(), (p / "x").write_text("x"))), "not a regular file"),
    "device": (replaced(lambda p: p.symlink_to("/dev/zero")), "not a regular file"),
    "epoch-1000": (forged(lambda s: s.update(epoch=1000)), "epoch 1000 is not one of 1…4"),
    "epoch-minus-3": (forged(lambda s: s.update(epoch=-3)), "epoch -3 is not one of 1…4"),
    "rows-short": (forged(lambda s: s.update(rows=s["rows"][:2])), "2 rows for epoch 3"),
    "nan-row": (forged(lambda s: s["rows"][1].update(test_acc=math.nan)), "['test_acc']"),
    "nan-weights": (
        forged(lambda s: s["model"][first_weight(s)].fill_(math.nan)),
        "non-finite weights",
    ),
    "wrong-shape": (
        forged(lambda s: s["model"].update({first_weight(s): torch.zeros(1)})),
        "unusable",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_bad_newest_checkpoint_falls_back_to_the_newest_valid_one(
    tmp_path: Path, interrupted: tuple[Path, Path, Path], damage: str
) -> None:
    config, reference, stopped = interrupted
    out = tmp_path / "out"
    shutil.copytree(stopped, out)
    folder = out / "bn_relu_drop" / "seed0"
    spoil, why = DAMAGES[damage]
    spoil(folder / "checkpoint-epoch3.pt")
    again = invoke("run", config, "--out", out, "--set", KEEP_ALL)
    assert again.exit_code == 0, again.output
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_epoch"] == 2, info["notes"]
    assert any(note.startswith("checkpoint-epoch3.pt") and why in note for note in info["notes"]), (
        info["notes"]
    )
    pd.testing.assert_frame_equal(metrics(folder), metrics(reference), check_exact=True)
    assert (folder / "checkpoint-epoch3.pt").is_file()  # written anew in its place


def test_ctrl_c_while_a_run_reads_its_checkpoints_keeps_them_and_says_so(
    tmp_path: Path, interrupted: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before the run has chosen its checkpoint (reading a large one takes seconds)
    leaves every checkpoint as it was: the line says so, not "nothing kept, it starts over",
    and the same command resumes from the newest."""
    from bnorder.runs import folder as run_folder

    config, reference, stopped = interrupted
    out = tmp_path / "out"
    shutil.copytree(stopped, out)

    def interrupt(path: Path) -> dict:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run_folder, "load_checkpoint", interrupt)
        again = invoke("run", config, "--out", out, "--set", KEEP_ALL)
    assert again.exit_code == 130, again.output
    assert "nothing kept" not in again.output
    said = "bn_relu_drop/seed0 interrupted while starting: any checkpoint it had is kept"
    assert said in again.output
    resumed = invoke("run", config, "--out", out, "--set", KEEP_ALL)
    assert resumed.exit_code == 0, resumed.output
    folder = out / "bn_relu_drop" / "seed0"
    assert json.loads((folder / "run.json").read_text())["resumed_from_epoch"] == 3
    pd.testing.assert_frame_equal(metrics(folder), metrics(reference), check_exact=True)


def test_dropping_checkpoints_takes_folders_fifos_and_dangling_links_too(tmp_path: Path) -> None:
    """keep_checkpoints: none drops every checkpoint once a run completes: a folder or a link
    to nothing under a checkpoint's name failed that (IsADirectoryError, FileNotFoundError)."""
    from bnorder.runs.folder import RunFolder

    folder = RunFolder(tmp_path / "seed0")
    folder.path.mkdir()
    (folder.path / "checkpoint-epoch1.pt").mkdir()
    (folder.path / "checkpoint-epoch1.pt" / "inside").write_text("x")
    os.mkfifo(folder.path / "checkpoint-epoch2.pt")
    (folder.path / "checkpoint.pt").symlink_to(tmp_path / "gone")
    (folder.path / "metrics.csv").write_text("kept\n")
    assert len(folder.checkpoints()) == 3
    folder.drop_checkpoints()
    assert [p.name for p in folder.path.iterdir()] == ["metrics.csv"]
