"""benchmarks/gpu_check.py where no GPU is: its refusal, its plan, and its choices, in-process
(no training; one subprocess for the shell wrapper)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up there
spec.loader.exec_module(gpu_check)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """The refusals and the plan only ask that the archive exists."""
    path = tmp_path / "cifar10-jpeg.tar.gz"
    path.write_bytes(b"")
    return path


def test_without_cuda_it_exits_2_with_one_line(archive: Path, tmp_path: Path) -> None:
    # no visible GPU, so that the check refuses on a CUDA machine too (rather than running)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--data", str(archive)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("gpu_check: no CUDA device (torch.cuda.is_available() is False)")


def test_dry_run_lists_every_step_and_exits_0(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = ["--out", str(tmp_path / "gpu")]
    gpu_check.main(["--dry-run", "--question", "cifar", "--data", str(archive), *out])
    plan = capsys.readouterr().out
    names = [line.split()[1] for line in plan.splitlines() if line[:1].isdigit()]
    assert names == [
        "setup",
        "throughput-vgg",
        "throughput-resnet",
        "throughput-vgg-compile",
        "run-seed0",
        "run-more-seeds",
        "compare",
        "report",
    ]
    assert plan.count("benchmarks/throughput.py configs/cifar.yaml") == 3
    assert "model.arch=resnet" in plan and "train.compile=true" in plan
    assert "-m bnorder run configs/cifar.yaml" in plan and "--seeds 0 " in plan
    assert "-m bnorder compare" in plan and "-m bnorder report" in plan
    assert f"data.root={archive}" in plan and "budget 540 s" in plan
    assert not (tmp_path / "gpu").exists()  # a dry run writes nothing


def test_the_default_asks_the_long_question_with_every_run_at_once(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gpu_check.main(["--dry-run", "--data", str(archive), "--out", str(tmp_path / "gpu")])
    plan = capsys.readouterr().out
    names = [line.split()[1] for line in plan.splitlines() if line[:1].isdigit()]
    assert names == ["setup", "throughput-vgg", "run-study", "compare", "report"]
    assert "-m bnorder run configs/reference-long-gpu.yaml" in plan and "--seeds" not in plan
    assert f"--out {tmp_path / 'gpu' / 'long-training'}" in plan
    assert not (tmp_path / "gpu").exists()


@pytest.mark.parametrize(
    ("speed", "seconds", "expected"),
    [(30_000.0, 400.0, 9), (100_000.0, 2000.0, 30), (1_000.0, 100.0, 1)],
)
def test_the_study_cuts_epochs_never_runs(speed: float, seconds: float, expected: int) -> None:
    """15 runs of 50,000 images: at 30,000 images/s, 400 s is 9 epochs each (an epoch of all
    15 costs 15 × 1.4 × 50,000 / 30,000 = 35 s, after 20 s of start and 3 s per run; the
    check then keeps one for the re-calibration)."""
    from bnorder.runs.config import load_config

    config = load_config(ROOT / "configs" / "reference-long-gpu.yaml")
    assert gpu_check.study_runs(config) == 15  # bn_only once for both dropout rates
    check = SimpleNamespace(
        throughput=[{"step": "throughput-vgg", "trainer_images_per_second": speed}]
    )
    assert gpu_check.choose_epochs(check, config, seconds, runs=15) == expected


def test_missing_data_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "cifar10-jpeg.tar.gz"
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as stopped:
            gpu_check.main(["--data", str(missing), *extra])
        assert stopped.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"gpu_check: no CIFAR-10 archive at {missing} (pass --data PATH)"


def test_an_output_folder_it_did_not_write_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit):
        gpu_check.prepare_out(tmp_path)
    assert "no GPU check wrote" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep"


def sweep(epochs: int = 15, schemes: int = 5, subset: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        data=SimpleNamespace(train_subset=subset),
        train=SimpleNamespace(epochs=epochs),
        schemes=dict.fromkeys(f"s{i}" for i in range(schemes)),
    )


@pytest.mark.parametrize(
    ("speed", "seconds", "expected"),
    [(50_000.0, 300.0, 15), (10_000.0, 200.0, 4), (1_000.0, 100.0, 1)],
)
def test_epochs_are_cut_only_where_seed_0_would_not_fit(
    speed: float, seconds: float, expected: int
) -> None:
    check = SimpleNamespace(
        throughput=[{"step": "throughput-vgg", "trainer_images_per_second": speed}]
    )
    assert gpu_check.choose_epochs(check, sweep(), seconds) == expected


def test_a_throughput_row_reads_as_one_line() -> None:
    figures = {
        f"{name}_images_per_second": "1000.0"
        for name in ("trainer", "textbook", "textbook_same", "floor_eager", "floor_same")
    }
    row = {
        "arch": "vgg",
        "widths": "64-128-256",
        "precision": "bf16",
        "channels_last": "True",
        "compile": "False",
        "trainer_over_textbook": "1.0",
        "trainer_over_floor_same": "1.0",
        "first_step_seconds": "0.5",
        **figures,
    }
    line = gpu_check.describe_throughput("throughput-vgg", row)
    assert "\n" not in line and "trainer 1,000 images/s" in line and "bf16" in line
