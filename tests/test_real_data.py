"""Smoke run on a tiny subset of the real CIFAR-10 copy beside the project; skipped elsewhere."""

from pathlib import Path

import pandas as pd
import pytest
from conftest import REAL_TARBALL
from typer.testing import CliRunner

from bnorder.cli.app import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.skipif(
    not REAL_TARBALL.exists(), reason=f"real CIFAR-10 not at {REAL_TARBALL}"
)


def test_smoke_config_on_real_cifar10(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "smoke"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(CONFIGS / "smoke.yaml"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            f"data.root={REAL_TARBALL}",
            "--set",
            "data.download=false",
            "--set",
            "data.train_subset=500",
            "--set",
            "data.test_subset=250",
            "--set",
            "train.epochs=1",  # the suite's time: the config's 3 seeds, 1 epoch each
        ],
    )
    assert result.exit_code == 0, result.output
    assert "50000 train" not in result.output and "500 train / 250 test" in result.output
    compared = CliRunner().invoke(app, ["compare", str(out)])
    assert compared.exit_code == 0, compared.output
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["scheme"]) == ["bn_only", "bn_relu_drop", "relu_drop_bn"]
    assert (summary["runs"] == 3).all()
    for scheme in summary["scheme"]:
        metrics = pd.read_csv(out / scheme / "seed0" / "metrics.csv")
        assert len(metrics) == 1 and metrics["train_loss"].notna().all()
        assert metrics["test_acc"].between(0, 1).all()
    # a newcomer's first compare tests something: each scheme against the declared baseline
    pairs = pd.read_csv(out / "comparisons.csv")
    trained = pairs[pairs["metric"] == "final_test_acc"]
    assert sorted(trained["scheme"]) == ["bn_only", "relu_drop_bn"]
    assert set(trained["baseline"]) == {"bn_relu_drop"} and (trained["n_paired"] == 3).all()
    assert trained["test"].str.startswith("paired t").all()
