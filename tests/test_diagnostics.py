"""Variance shift and BN re-calibration on constructed cases with known answers."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from bnorder.shift.measure import recalibrate_bn, variance_shift

MU, SIGMA, C = 1.0, 2.0, 32


def batches(n: int = 40, size: int = 500, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [MU + SIGMA * torch.randn(size, C, generator=generator) for _ in range(n)]


def trained(model: nn.Module) -> nn.Module:
    """Let BN's running statistics settle in train mode, as training would."""
    model.train()
    with torch.no_grad():
        for x in batches(n=300, seed=1):
            model(x)
    return model


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_into_bn_shows_the_analytic_shift_and_recalibration_removes_it(p: float) -> None:
    torch.manual_seed(0)
    model = trained(nn.Sequential(nn.Dropout(p), nn.BatchNorm1d(C)))
    # inverted dropout: E[(x·m)²] = E[x²]/(1-p), so the training-time variance is
    train_var = (SIGMA**2 + MU**2) / (1 - p) - MU**2
    analytic = train_var / SIGMA**2  # over the eval-time (no dropout) variance
    (row,) = variance_shift(model, batches(seed=2))
    assert row["name"] == "1" and row["real_var"] == pytest.approx(SIGMA**2, rel=0.02)
    assert row["shift"] == pytest.approx(analytic, rel=0.05)
    recalibrate_bn(model, batches(seed=2), mode="sequential")
    (after,) = variance_shift(model, batches(seed=2))
    assert after["shift"] == pytest.approx(1.0, abs=1e-6)


def test_batch_mode_recalibration_also_removes_a_single_layers_shift() -> None:
    torch.manual_seed(0)
    model = trained(nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(C)))
    assert variance_shift(model, batches(seed=2))[0]["shift"] > 2
    recalibrate_bn(model, batches(seed=2), mode="batch")
    assert variance_shift(model, batches(seed=2))[0]["shift"] == pytest.approx(1.0, abs=0.01)
    assert model[1].momentum == 0.1 and model.training  # restored


def test_bn_only_network_shows_no_shift() -> None:
    torch.manual_seed(0)
    model = trained(
        nn.Sequential(
            nn.Linear(C, C), nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(C, C), nn.BatchNorm1d(C)
        )
    )
    rows = variance_shift(model, batches(seed=2))
    assert [r["layer"] for r in rows] == [0, 1]
    for row in rows:
        assert 1.0 <= row["shift"] < 1.05


def test_unknown_recalibration_mode() -> None:
    with pytest.raises(ValueError, match="sequential or batch"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm1d(2)), [], mode="momentum")


def test_audit_of_a_run_folder_and_its_diagnose_alias(tmp_path, pickle_root) -> None:
    """``audit RUN_DIR`` rebuilds the run from its checkpoint: which noise feeds each BN,
    the shift per layer on the run's training images, and with --recalibrate the test
    accuracy before and after; ``diagnose`` is the same command by another name."""
    import json

    from conftest import invoke, tiny_config

    config = tiny_config(
        tmp_path, pickle_root, schemes={"drop_bn_relu": ["dropout", "bn", "act"], "plain": ["act"]}
    )
    assert invoke("run", config).exit_code == 0
    run_dir = tmp_path / "results" / "drop_bn_relu" / "seed0"
    args = [run_dir, "--sample", "50", "--recalibrate"]
    result = invoke("audit", *args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "drop_bn_relu seed 0, epoch 2: BN layers and the noise that feeds them" in said
    assert "features.stage1.0.bn" in said and "running var" in said
    assert re.search(r"advice: noise shifts \d BN layers? past .*: largest [\d.]+ at ", said)
    assert f"measured on 50 training images of {run_dir}" in said
    assert "after re-calibrating BN with noise off (sequential)" in said
    found = json.loads(invoke("audit", *args, "--format", "json").output)
    first = found["layers"][0]
    assert first["name"] == "features.stage1.0.bn" and first["fed_by"][0]["hops"] == 1
    assert first["shift"] == max(first["running_var"], first["real_var"]) / min(
        first["running_var"], first["real_var"]
    )
    assert 0 < found["accuracy"] <= 1 and found["recalibration"] == "sequential"
    assert all(layer["shift_recalibrated"] is not None for layer in found["layers"])
    diagnosed = invoke("diagnose", *args)
    assert diagnosed.exit_code == 0 and diagnosed.output == result.output  # the same figures
    huge = invoke("diagnose", run_dir, "--sample", "100000000")
    assert huge.exit_code == 0 and "on 100 training images" in huge.output  # all there are
    plain = invoke("audit", tmp_path / "results" / "plain" / "seed0")
    assert plain.exit_code == 0 and "no BN layer, so no variance shift" in plain.output
    missing = invoke("diagnose", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "not a readable run" in missing.output
    mixed = invoke("audit", run_dir, "--weights", tmp_path / "w.pt")
    assert mixed.exit_code == 2 and "--weights: not with a run's folder" in mixed.output


# ---------------------------------------------------------------- during a sweep


def test_resnet_sequential_recalibration_follows_execution_order() -> None:
    """Sequential re-calibration assumes BN layers are registered in the order they run; in a
    residual network with dropout before BN, a shift of exactly 1 afterwards shows they are."""
    from bnorder.nets.models import build_model
    from bnorder.nets.options import ModelConfig
    from bnorder.nets.schemes import Scheme

    config = ModelConfig(arch="resnet", widths=[4, 8], blocks_per_stage=2, dropout=0.5)
    model = build_model(config, Scheme(("dropout", "bn", "act")), num_classes=10, seed=0)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(64, 3, 32, 32, generator=generator) for _ in range(4)]
    model.train()
    with torch.no_grad():
        for x in images * 5:
            model(x)
    assert max(r["shift"] for r in variance_shift(model, images)) > 1.2
    recalibrate_bn(model, images, mode="sequential")
    rows = variance_shift(model, images)
    assert len(rows) == 2 * 2 * 2 + 1  # two BN per block, and the final one
    assert all(r["shift"] == pytest.approx(1.0, abs=1e-5) for r in rows)
