"""Variance shift measured during a sweep, and BN re-calibration after it (issue 4):
what lands in metrics.csv, variance_shift.csv and run.json, and that it survives resume."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import invoke, tiny_config

from bnorder.runs.metrics import SHIFT_COLUMNS, read_metrics, read_shifts

SCHEMES = {"drop_bn_relu": ["dropout", "bn", "act"], "plain": ["act", "dropout"]}
TIMING = ["epoch_seconds", "images_per_second"]


def files(out: Path, scheme: str = "drop_bn_relu") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = out / scheme / "seed0"
    shifts = folder / "variance_shift.csv"
    return (
        read_metrics(folder / "metrics.csv"),
        read_shifts(shifts) if shifts.exists() else None,
        json.loads((folder / "run.json").read_text()),
    )


def recalibrating_config(tmp_path: Path, root: Path) -> Path:
    return tiny_config(
        tmp_path, root, schemes=SCHEMES, model={"dropout": 0.5}, train={"recalibrate_bn": True}
    )


def test_shift_every_epoch_in_both_files(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(tmp_path, pickle_root, schemes=SCHEMES, train={"epochs": 3})
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    metrics, shifts, _ = files(tmp_path / "results")
    assert list(shifts.columns) == SHIFT_COLUMNS
    # VGG 4-8, one conv per stage, hidden 8: three BN layers, measured after each of 3 epochs
    assert shifts["epoch"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert shifts["layer"].tolist()[:3] == [0, 1, 2]
    assert shifts["name"].tolist()[:3] == [
        "features.stage1.0.bn",
        "features.stage2.0.bn",
        "hidden.0.bn",
    ]
    assert (shifts["shift"] >= 1).all() and not shifts["recalibrated"].any()
    ratio = shifts[["running_var", "real_var"]].max(axis=1) / shifts[
        ["running_var", "real_var"]
    ].min(axis=1)
    assert shifts["shift"].to_numpy() == pytest.approx(ratio.to_numpy())
    per_epoch = shifts.groupby("epoch")["shift"]
    assert metrics["vshift_max"].tolist() == pytest.approx(per_epoch.max().tolist())
    assert metrics["vshift_mean"].tolist() == pytest.approx(per_epoch.mean().tolist())
    assert metrics["test_acc_recalibrated"].isna().all()  # not asked for

    plain, plain_shifts, _ = files(tmp_path / "results", "plain")
    assert plain_shifts is None  # no BN layer: no file…
    assert plain["vshift_max"].isna().all() and plain["vshift_mean"].isna().all()  # …empty


def test_every_n_epochs_and_always_the_last(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(
        tmp_path, pickle_root, schemes=SCHEMES, train={"epochs": 3, "vshift_every": 2}
    )
    assert invoke("run", config, "--schemes", "drop_bn_relu").exit_code == 0
    metrics, shifts, _ = files(tmp_path / "results")
    assert sorted(set(shifts["epoch"])) == [2, 3]
    assert metrics["vshift_max"].isna().tolist() == [True, False, False]
    assert metrics["train_eval_acc"].notna().all()  # the train figures every epoch regardless
    config = tiny_config(
        tmp_path, pickle_root, schemes=SCHEMES, train={"epochs": 3, "vshift_every": 0}
    )
    assert (
        invoke("run", config, "--schemes", "drop_bn_relu", "--out", tmp_path / "end").exit_code == 0
    )
    metrics, shifts, _ = files(tmp_path / "end")
    assert set(shifts["epoch"]) == {3}
    assert metrics["vshift_max"].isna().tolist() == [True, True, False]


def test_measuring_changes_nothing_in_training(tmp_path: Path, pickle_root: Path) -> None:
    on = tiny_config(tmp_path, pickle_root, schemes=SCHEMES)
    assert invoke("run", on, "--out", tmp_path / "on").exit_code == 0
    off = tiny_config(tmp_path, pickle_root, schemes=SCHEMES, train={"vshift_sample": 0})
    assert invoke("run", off, "--out", tmp_path / "off").exit_code == 0
    with_shift, _, _ = files(tmp_path / "on")
    without, none, _ = files(tmp_path / "off")
    assert none is None and without["vshift_max"].isna().all()
    assert without["train_eval_loss"].isna().all() and with_shift["train_eval_loss"].notna().all()
    columns = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(with_shift[columns], without[columns], check_exact=True)


def test_train_figures_in_eval_mode_on_the_fixed_sample(tmp_path: Path, pickle_root: Path) -> None:
    """train_eval_loss and _acc are the trained model's figures in eval mode on the fixed,
    un-augmented sample (here the whole training set), exactly as a separate evaluation finds
    them; the running train-mode figures stay beside them."""
    from bnorder.data.loaders import DeviceLoader, load_data
    from bnorder.nets.models import build_model
    from bnorder.nets.schemes import Scheme
    from bnorder.runs.config import build_config
    from bnorder.runs.folder import load_checkpoint
    from bnorder.runs.train import evaluate, resolve_device_options

    config = tiny_config(tmp_path, pickle_root, schemes=SCHEMES, model={"dropout": 0.5})
    assert invoke("run", config, "--schemes", "drop_bn_relu").exit_code == 0
    metrics, _, info = files(tmp_path / "results")
    run_config = build_config({**info["config"], "output": str(tmp_path), "device": "cpu"})
    model = build_model(
        run_config.model, Scheme(tuple(SCHEMES["drop_bn_relu"])), num_classes=10, seed=0
    )
    checkpoint = load_checkpoint(tmp_path / "results" / "drop_bn_relu" / "seed0" / "checkpoint.pt")
    model.load_state_dict(checkpoint["model"])
    cpu = torch.device("cpu")
    data = load_data(run_config.data)
    sample = DeviceLoader(data.train, batch_size=64, device=cpu, train=False, stats=data.stats)
    loss, accuracy = evaluate(model, sample, resolve_device_options(run_config.train, cpu))
    last = metrics.iloc[-1]
    assert last["train_eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert last["train_eval_acc"] == pytest.approx(accuracy)
    assert last["train_loss"] != pytest.approx(loss, rel=1e-3)  # dropout on: another figure


def test_sequential_recalibration_in_the_run_files(tmp_path: Path, pickle_root: Path) -> None:
    # 100 training images: the shift sample and the re-calibration data are the same images,
    # so sequential re-calibration must leave no shift at all
    config = recalibrating_config(tmp_path, pickle_root)
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    metrics, shifts, info = files(tmp_path / "results")
    last = metrics.iloc[-1]
    assert metrics["test_acc_recalibrated"].isna().tolist() == [True, False]
    assert 0 <= last["test_acc_recalibrated"] <= 1 and last["test_loss_recalibrated"] > 0
    assert last["vshift_max_recalibrated"] == pytest.approx(1.0, abs=1e-4)
    after = shifts[shifts["recalibrated"]]
    assert after["epoch"].tolist() == [2, 2, 2] and after["shift"].to_numpy() == pytest.approx(
        1, abs=1e-4
    )
    assert last["vshift_max"] > last["vshift_max_recalibrated"]
    final = info["final"]
    assert final["test_acc_recalibrated"] == last["test_acc_recalibrated"]
    assert final["vshift_mean_recalibrated"] == pytest.approx(last["vshift_mean_recalibrated"])

    plain, _, plain_info = files(tmp_path / "results", "plain")
    assert plain["test_acc_recalibrated"].isna().all()  # nothing to re-calibrate
    assert "test_acc_recalibrated" not in plain_info["final"]


def test_batch_recalibration_leaves_a_residual_shift(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(
        tmp_path,
        pickle_root,
        schemes={"drop_bn_relu": ["dropout", "bn", "act"]},
        model={"dropout": 0.5},
        train={"recalibrate_bn": True, "recalibration": "batch", "recalibration_sample": 60},
    )
    assert invoke("run", config).exit_code == 0
    metrics, _, info = files(tmp_path / "results")
    last = metrics.iloc[-1]
    assert info["config"]["train"]["recalibration"] == "batch"
    # upstream BN normalised with batch statistics while the later ones were estimated
    assert 1.0 < last["vshift_max_recalibrated"] < last["vshift_max"]


def test_interrupted_recalibration_is_redone_on_resume(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    from bnorder.runs.monitor import ShiftMonitor

    config = recalibrating_config(tmp_path, pickle_root)
    assert invoke("run", config, "--out", tmp_path / "reference").exit_code == 0

    def interrupted(self, *args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ShiftMonitor, "recalibrate", interrupted)
        assert invoke("run", config).exit_code == 130
    metrics, _, info = files(tmp_path / "results")
    assert info["status"] == "interrupted" and info["epochs_completed"] == 2
    assert metrics["test_acc_recalibrated"].isna().all()
    resumed = invoke("run", config)
    assert resumed.exit_code == 0, resumed.output
    for out in ("results", "reference"):
        assert files(tmp_path / out)[2]["status"] == "completed"
    (a, sa, _), (b, sb, _) = files(tmp_path / "results"), files(tmp_path / "reference")
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING), check_exact=True)
    pd.testing.assert_frame_equal(sa, sb, check_exact=True)


def test_damaged_diagnostic_files_are_refused(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(tmp_path, pickle_root, schemes=SCHEMES)
    assert invoke("run", config, "--schemes", "drop_bn_relu").exit_code == 0
    folder = tmp_path / "results" / "drop_bn_relu" / "seed0"
    shifts = folder / "variance_shift.csv"
    shifts.write_text(shifts.read_text()[:-5])
    with pytest.raises(ValueError, match="cut short"):
        read_shifts(shifts)
    metrics = folder / "metrics.csv"
    lines = metrics.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("vshift_max")] = "big"
    metrics.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="vshift_max"):
        read_metrics(metrics)


def test_compare_describes_shift_and_recalibration(tmp_path: Path, pickle_root: Path) -> None:
    from bnorder.analysis.compare import compare

    config = recalibrating_config(tmp_path, pickle_root)
    assert invoke("run", config, "--seeds", "0,1").exit_code == 0
    out = tmp_path / "results"
    shift_file = out / "drop_bn_relu" / "seed1" / "variance_shift.csv"
    kept = shift_file.read_text()
    shift_file.write_text("epoch,layer\n1,0\n")
    damaged = invoke("compare", out)
    assert damaged.exit_code == 0 and f"{shift_file}: unreadable" in damaged.output
    shift_file.write_text(kept)

    result = invoke("compare", out, "--plots", out / "plots")
    assert result.exit_code == 0, result.output
    assert "max shift" in result.output and "re-est. test" in result.output
    for name in ("vshift_by_layer", "vshift_over_epochs", "recalibration_gain"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 0
    summary = compare(out, write=False).summary.set_index("scheme")
    lasts = [
        read_metrics(out / "drop_bn_relu" / f"seed{s}" / "metrics.csv").iloc[-1] for s in (0, 1)
    ]
    row = summary.loc["drop_bn_relu"]
    geometric = math.sqrt(lasts[0]["vshift_max"] * lasts[1]["vshift_max"])
    assert row["vshift_max_gmean"] == pytest.approx(geometric)
    assert row["vshift_max_ci_low"] >= 0 and "vshift_max_mean" not in row
    gains = [m["test_acc_recalibrated"] - m["test_acc"] for m in lasts]
    assert row["recalibration_gain_mean"] == pytest.approx(sum(gains) / 2)
    assert row["recalibration_gain_std"] == pytest.approx(pd.Series(gains).std())
    assert pd.isna(summary.loc["plain", "vshift_max_gmean"])  # no BN: nothing to describe
    # the gap: train − test both in eval mode; the train-mode one beside it
    gaps = [m["train_eval_acc"] - m["test_acc"] for m in lasts]
    assert row["gap_mean"] == pytest.approx(sum(gaps) / 2)
    assert row["gap_train_mode_mean"] == pytest.approx(
        sum(m["train_acc"] - m["test_acc"] for m in lasts) / 2
    )
    assert "train: accuracy on a fixed sample of training images" in " ".join(result.output.split())


def test_compare_without_diagnostics_has_no_such_columns(tmp_path: Path, pickle_root: Path) -> None:
    from bnorder.analysis.compare import compare

    config = tiny_config(tmp_path, pickle_root, schemes=SCHEMES, train={"vshift_sample": 0})
    assert invoke("run", config).exit_code == 0
    comparison = compare(tmp_path / "results", write=False)
    assert not any(c.startswith(("vshift", "recalibration")) for c in comparison.summary)
    assert comparison.shifts.empty
    assert "max shift" not in invoke("compare", tmp_path / "results").output


def test_a_failed_recalibration_keeps_the_trained_run(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    from bnorder.runs.monitor import ShiftMonitor

    def out_of_memory(self, *args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(ShiftMonitor, "recalibrate", out_of_memory)
    config = recalibrating_config(tmp_path, pickle_root)
    result = invoke("run", config, "--schemes", "drop_bn_relu")
    assert result.exit_code == 0, result.output
    metrics, _, info = files(tmp_path / "results")
    assert info["status"] == "completed" and len(metrics) == 2
    assert info["notes"] == ["BN re-calibration failed (RuntimeError: CUDA out of memory)"]
    assert metrics["test_acc_recalibrated"].isna().all()
    # one scheme, so nothing to test against: compare still reports it
    compared = invoke("compare", tmp_path / "results")
    assert compared.exit_code == 0, compared.output


def test_diagnose_reads_checkpoints_of_any_format(tmp_path: Path, pickle_root: Path) -> None:
    import torch

    config = recalibrating_config(tmp_path, pickle_root)
    assert invoke("run", config, "--schemes", "drop_bn_relu").exit_code == 0
    folder = tmp_path / "results" / "drop_bn_relu" / "seed0"
    checkpoint = folder / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    old = {k: v for k, v in state.items() if k not in ("shift_rows", "scaler")}
    torch.save({**old, "format": 1}, checkpoint)  # as written before the shift was measured
    result = invoke("diagnose", folder, "--sample", "50", "--recalibrate")
    assert result.exit_code == 0, result.output
    assert (
        re.search(r"largest [\d.]+ at ", result.output)
        and "after re-calibrating BN" in result.output
    )
    torch.save({**old, "model": {}}, checkpoint)
    broken = invoke("diagnose", folder)
    assert broken.exit_code == 2 and "checkpoint does not fit the run's model" in broken.output
