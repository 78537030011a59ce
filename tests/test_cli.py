"""The whole path through the command line: run → files → compare, and bad input."""

import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import invoke, tiny_config, write_pickle_layout

from bnorder.runs.metrics import METRIC_TABLE

SCHEMES = ["bn_relu_drop", "relu_drop_bn", "bn_only"]
TIMING = ["epoch_seconds", "images_per_second"]


@pytest.fixture
def config(tmp_path: Path, pickle_root: Path) -> Path:
    return tiny_config(tmp_path, pickle_root, seeds=[0, 1])


def test_run_then_compare(tmp_path: Path, config: Path) -> None:
    result = invoke("run", config, "--set", "data.train_subset=80", "--set", "data.test_subset=30")
    assert result.exit_code == 0, result.output
    assert "6 completed" in result.output and "80 train / 30 test images" in result.output
    out = tmp_path / "results"
    assert (out / "config.yaml").exists()
    for scheme in SCHEMES:
        for seed in (0, 1):
            folder = out / scheme / f"seed{seed}"
            metrics = pd.read_csv(folder / "metrics.csv")
            assert list(metrics.columns) == METRIC_TABLE.csv_columns()
            assert metrics["epoch"].tolist() == [1, 2]
            assert set(metrics["scheme"]) == {scheme} and set(metrics["seed"]) == {seed}
            for column in ("train_acc", "test_acc"):
                assert metrics[column].between(0, 1).all()
            info = json.loads((folder / "run.json").read_text())
            assert info["status"] == "completed"
            assert info["config"]["schemes"] == {scheme: {"ops": info["ops"], "head": []}}
            assert info["config"]["seeds"] == [seed]
            assert info["device"] == "cpu" and info["torch"] and "wall_seconds" in info
            assert info["final"]["test_acc"] == metrics["test_acc"].iloc[-1]

    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    for scheme in SCHEMES:
        assert scheme in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["scheme"]) == sorted(SCHEMES)
    assert (summary["runs"] == 2).all()
    assert summary["final_test_acc_mean"].is_monotonic_decreasing
    row = summary.set_index("scheme").loc["bn_only"]
    runs = [pd.read_csv(out / "bn_only" / f"seed{s}" / "metrics.csv") for s in (0, 1)]
    finals = [m["test_acc"].iloc[-1] for m in runs]
    assert row["final_test_acc_mean"] == pytest.approx(sum(finals) / 2)
    assert row["final_test_acc_std"] == pytest.approx(pd.Series(finals).std())


def test_compare_formats_and_baseline(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config).exit_code == 0
    declared = invoke("compare", out)  # against the config's first scheme, confirmatory
    assert declared.exit_code == 0 and "exploratory" not in declared.output
    assert set(pd.read_csv(out / "comparisons.csv")["baseline"]) == {"bn_relu_drop"}
    as_csv = invoke("compare", out, "--format", "csv")
    assert as_csv.exit_code == 0
    from io import StringIO

    assert pd.read_csv(StringIO(as_csv.output))["runs"].tolist() == [2, 2, 2]
    as_json = invoke("compare", out, "--format", "json", "--baseline", "bn_only")
    payload = json.loads(as_json.output)
    assert len(payload["summary"]) == 3 and len(payload["comparisons"]) == 2
    assert {c["baseline"] for c in payload["comparisons"]} == {"bn_only"}
    markdown = invoke("compare", out, "--format", "markdown")
    assert markdown.output.startswith("| scheme | runs | test |")
    table = invoke("compare", out, "--baseline", "bn_only")
    assert "95% CI" in table.output and "bn_only" in table.output
    # bn_only's two runs both sit at chance here: a degenerate cell, reported without a t-test
    assert "degenerate" in table.output and "every run of one side is at exactly 10.00" in (
        " ".join(table.output.split())
    )
    assert "exploratory: " in table.output  # a baseline other than the declared one
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["scheme"]) == {"bn_relu_drop", "relu_drop_bn"}
    plots = invoke("compare", out, "--plots", tmp_path / "figures")
    assert plots.exit_code == 0, plots.output
    names = [
        "final_accuracy.png",
        "forest.png",  # each scheme's difference from the baseline, with its CI
        "gap.png",
        "loss.png",
        "test_accuracy.png",
        "vshift_by_layer.png",  # the variance shift, measured by default
        "vshift_over_epochs.png",
    ]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == names
    for name in names:
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blocked = invoke("compare", out, "--plots", out / "summary.csv")  # a file, not a folder
    assert blocked.exit_code == 2, blocked.output
    assert (
        blocked.output.strip()
        .splitlines()[-1]
        .startswith(f"error: {out / 'summary.csv'}: cannot write figures there")
    )
    bad = invoke("compare", out, "--baseline", "nope")
    assert bad.exit_code == 2 and "--baseline nope: no completed runs" in bad.output


def test_compare_all_pairs(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config).exit_code == 0
    result = invoke("compare", out, "--pairs", "all")
    assert result.exit_code == 0, result.output
    ranking = [line for line in result.output.splitlines() if line.startswith("ranking: ")]
    assert len(ranking) == 1 and ranking[0].startswith("ranking: as trained: ")
    assert sorted(ranking[0][21:].replace("≈", ">").split(" > ")) == sorted(SCHEMES)
    final = pd.read_csv(out / "comparisons.csv").query("metric == 'final_test_acc'")
    assert sorted(map(sorted, zip(final["scheme"], final["baseline"], strict=True))) == sorted(
        sorted(pair) for pair in itertools.combinations(SCHEMES, 2)
    )
    payload = json.loads(invoke("compare", out, "--pairs", "all", "--format", "json").output)
    assert payload["ranking"] == [ranking[0][9:]] and len(payload["comparisons"]) == 3
    refused = invoke("compare", out, "--pairs", "all", "--baseline", "bn_only")
    assert refused.exit_code == 2 and "--baseline: not with --pairs all" in refused.output
    exploratory = invoke("compare", out, "--baseline", "best")
    assert exploratory.exit_code == 0, exploratory.output
    verdicts = [line for line in exploratory.output.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 3 and all(v.startswith("- exploratory: ") for v in verdicts)
    assert "ranking: exploratory: " in exploratory.output


def test_same_config_twice_gives_identical_metrics(tmp_path: Path, config: Path) -> None:
    for out in ("a", "b"):
        assert invoke("run", config, "--out", tmp_path / out).exit_code == 0
    for scheme in SCHEMES:
        for seed in (0, 1):
            a, b = (
                pd.read_csv(tmp_path / out / scheme / f"seed{seed}" / "metrics.csv")
                for out in ("a", "b")
            )
            pd.testing.assert_frame_equal(
                a.drop(columns=TIMING), b.drop(columns=TIMING), check_exact=True
            )


def test_every_scheme_sees_the_same_batches(config: Path, monkeypatch) -> None:
    """Same seed → same data order, crops and flips for every scheme, end to end."""
    import torch

    from bnorder.data.loaders import DeviceLoader

    seen: dict[str, list] = {}
    original = DeviceLoader.epoch
    current = {"scheme": ""}

    def spy(self, epoch=0):
        for images, labels in original(self, epoch):
            if self.train:
                seen.setdefault(current["scheme"], []).append((images.clone(), labels.clone()))
            yield images, labels

    import bnorder.runs.executors as executors

    original_train_job = executors.train_job

    def tracking_train_job(job, *args, **kwargs):
        current["scheme"] = job.run.scheme
        return original_train_job(job, *args, **kwargs)

    monkeypatch.setattr(DeviceLoader, "epoch", spy)
    monkeypatch.setattr(executors, "train_job", tracking_train_job)
    assert invoke("run", config, "--seeds", "0").exit_code == 0
    reference = seen["bn_relu_drop"]
    assert len(reference) == 2 * 3  # 2 epochs × 3 batches of 32 from 100 images
    for scheme in ("relu_drop_bn", "bn_only"):
        for (xa, ya), (xb, yb) in zip(reference, seen[scheme], strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_cli_overrides_and_skip_on_rerun(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "picked"
    args = [
        "run",
        config,
        "--schemes",
        "bn_only,relu_drop_bn",
        "--seeds",
        "3",
        "--set",
        "train.epochs=1",
        "--device",
        "cpu",
        "--out",
        out,
    ]
    assert invoke(*args).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bn_only", "relu_drop_bn"]
    assert len(pd.read_csv(out / "bn_only" / "seed3" / "metrics.csv")) == 1
    before = (out / "bn_only" / "seed3" / "metrics.csv").read_text()
    again = invoke(*args)
    assert again.exit_code == 0 and "2 already done" in again.output
    assert (out / "bn_only" / "seed3" / "metrics.csv").read_text() == before


def test_changed_config_is_refused_then_overwritten(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config, "--seeds", "0", "--schemes", "bn_only").exit_code == 0
    before = (out / "bn_only" / "seed0" / "metrics.csv").read_text()
    changed = invoke(
        "run", config, "--seeds", "0", "--schemes", "bn_only", "--set", "train.lr=0.01"
    )
    assert changed.exit_code == 2
    assert "bn_only/seed0 (train.lr)" in changed.output and "--overwrite" in changed.output
    assert (out / "bn_only" / "seed0" / "metrics.csv").read_text() == before  # untouched
    replaced = invoke(
        "run",
        config,
        "--seeds",
        "0",
        "--schemes",
        "bn_only",
        "--set",
        "train.lr=0.01",
        "--overwrite",
    )
    assert replaced.exit_code == 0
    info = json.loads((out / "bn_only" / "seed0" / "run.json").read_text())
    assert info["config"]["train"]["lr"] == 0.01


def test_runs_of_another_config_outside_the_sweep_are_refused(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config, "--seeds", "0", "--schemes", "bn_only").exit_code == 0
    other = invoke("run", config, "--seeds", "1", "--schemes", "bn_only", "--set", "train.epochs=1")
    assert other.exit_code == 2
    assert "bn_only/seed0 (train.epochs)" in other.output
    forced = invoke(
        "run",
        config,
        "--seeds",
        "1",
        "--schemes",
        "bn_only",
        "--set",
        "train.epochs=1",
        "--overwrite",
    )
    assert forced.exit_code == 2  # --overwrite replaces runs of this sweep, never others
    assert not (out / "bn_only" / "seed1").exists()
    # the same experiment with another scheme and seed joins the folder; config.yaml lists both
    assert invoke("run", config, "--seeds", "1", "--schemes", "relu_drop_bn").exit_code == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert set(written["schemes"]) == {"bn_only", "relu_drop_bn"} and written["seeds"] == [0, 1]
    # the baseline declared first stands: the config's first scheme, though never run here
    assert written["baseline"] == "bn_relu_drop"
    moved = invoke("run", config, "--schemes", "bn_only", "--set", "baseline=bn_only")
    assert (
        moved.exit_code == 0
        and "baseline"
        not in json.loads((out / "bn_only" / "seed0" / "run.json").read_text())["config"]
    )  # the experiment's, not the run's
    assert yaml.safe_load((out / "config.yaml").read_text())["baseline"] == "bn_relu_drop"


def test_compare_points_out_mixed_configs(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config, "--seeds", "0", "--schemes", "bn_only").exit_code == 0
    assert (
        invoke(
            "run",
            config,
            "--seeds",
            "0",
            "--schemes",
            "bn_only",
            "--out",
            tmp_path / "b",
            "--set",
            "train.epochs=1",
        ).exit_code
        == 0
    )
    import shutil

    shutil.move(tmp_path / "b" / "bn_only" / "seed0", out / "bn_only" / "seed1")  # by hand
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    assert "runs of 2 different configs" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 and (summary["runs"] == 1).all()


def test_compare_on_a_scheme_folder(tmp_path: Path, config: Path) -> None:
    assert invoke("run", config, "--seeds", "0", "--schemes", "bn_only").exit_code == 0
    result = invoke("compare", tmp_path / "results" / "bn_only")
    assert result.exit_code == 0, result.output
    assert "bn_only" in result.output


def test_output_folder_that_is_a_file(tmp_path: Path, config: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    result = invoke("run", config, "--out", blocker)
    assert result.exit_code == 2 and "blocker" in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "not a folder"


def test_failed_run_is_recorded_and_not_averaged(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "results"
    assert invoke("run", config, "--seeds", "0").exit_code == 0
    run_file = out / "bn_only" / "seed0" / "run.json"
    info = json.loads(run_file.read_text())
    info["status"], info["error"] = "failed", "RuntimeError: boom"
    run_file.write_text(json.dumps(info))
    (out / "stray").mkdir()
    (out / "stray" / "run.json").write_text("{not json")
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    assert "bn_only/seed0: failed (RuntimeError: boom)" in result.output
    assert "not done" in result.output
    assert "stray/run.json: unreadable run file" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["scheme"].tolist()[-1] == "bn_only"  # listed last, with nothing averaged
    failed = summary.set_index("scheme").loc["bn_only"]
    assert failed["runs"] == 0 and failed["incomplete"] == 1
    assert pd.isna(failed["final_test_acc_mean"])
    assert (summary.set_index("scheme").drop("bn_only")["incomplete"] == 0).all()


def test_diverged_run_is_marked_and_exit_is_nonzero(tmp_path: Path, config: Path) -> None:
    result = invoke(
        "run",
        config,
        "--seeds",
        "0",
        "--schemes",
        "bn_only",
        "--set",
        "train.lr=1e6",
        "--set",
        "train.warmup_epochs=0",
    )
    assert result.exit_code == 1
    info = json.loads((tmp_path / "results" / "bn_only" / "seed0" / "run.json").read_text())
    assert info["status"] == "diverged"
    assert f"in epoch {info['epochs_completed'] + 1}" in info["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.epocs=2"], "train.epocs: unknown key (did you mean 'epochs'?)"),
        (["--set", "schemes.x=[bn,bn]"], "schemes.x.ops: token 'bn' appears twice"),
        (["--set", "model.dropout=1.5"], "model.dropout: Input should be less than 1"),
        (["--set", "train.batch_size=0"], "train.batch_size: Input should be greater than 0"),
        (["--seeds", "a"], "seeds.0: Input should be a valid integer (got 'a')"),
        (["--schemes", "nope"], "--schemes: unknown scheme 'nope'"),
        (["--schemes", ","], "--schemes: no scheme named"),
        (["--device", "tpu"], "device: device must be auto, cpu, cuda, cuda:N (N < 1000) or mps"),
        (["--set", "data.root=/no/such/place"], "CIFAR-10 not found at /no/such/place"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_training(
    tmp_path: Path, config: Path, args: list[str], message: str
) -> None:
    result = invoke("run", config, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "results").glob("*/seed*"))


def test_missing_config_file(tmp_path: Path) -> None:
    result = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "nope.yaml: cannot read config" in result.output


def test_compare_without_runs_is_an_error(tmp_path: Path) -> None:
    result = invoke("compare", tmp_path)
    assert result.exit_code == 2 and "no completed runs found" in result.output
    result = invoke("compare", tmp_path / "missing")
    assert result.exit_code == 2 and "no such folder" in result.output


def test_model_command_shows_the_order(config: Path) -> None:
    result = invoke("model", config, "--scheme", "relu_drop_bn")
    assert result.exit_code == 0, result.output
    assert "CONV → ACT → DROPOUT → BN" in result.output
    text = result.output
    assert text.index("(act): ReLU") < text.index("(dropout): Dropout") < text.index("(bn):")
    assert "vgg, 10 classes, 3×32×32 images" in result.output and " parameters" in result.output


def test_python_dash_m_entry_point(config: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bnorder", "model", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "bn_relu_drop" in done.stdout


def test_grid_runs_every_combination_with_its_values_as_columns(
    tmp_path: Path, pickle_root: Path
) -> None:
    config = tiny_config(
        tmp_path,
        pickle_root,
        schemes={"bn_only": ["bn", "act"], "drop_bn_relu": ["dropout", "bn", "act"]},
        seeds=[0, 1],
        train={"epochs": 1},
        grid={"model.dropout": [0.1, 0.5], "model.arch": ["vgg", "resnet"]},
    )
    out = tmp_path / "results"
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    # bn_only reads no dropout: one run per arch and seed, shared by both dropout points
    assert "12 completed" in result.output
    assert not (out / "dropout=0.5,arch=vgg" / "bn_only").exists()
    labels = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert labels == [
        "dropout=0.1,arch=resnet",
        "dropout=0.1,arch=vgg",
        "dropout=0.5,arch=resnet",
        "dropout=0.5,arch=vgg",
    ]
    folder = out / "dropout=0.5,arch=resnet" / "drop_bn_relu" / "seed1"
    metrics = pd.read_csv(folder / "metrics.csv")
    assert metrics[["model.dropout", "model.arch"]].iloc[0].tolist() == [0.5, "resnet"]
    info = json.loads((folder / "run.json").read_text())
    assert info["grid"] == {"model.dropout": 0.5, "model.arch": "resnet"}
    assert info["config"]["model"]["dropout"] == 0.5 and info["config"]["model"]["arch"] == "resnet"
    assert "grid" in yaml.safe_load((out / "config.yaml").read_text())

    compared = invoke("compare", out)
    assert compared.exit_code == 0, compared.output
    assert "model.dropout" in compared.output and "[dropout=0.5,arch=vgg]" in compared.output
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 8 and set(summary["model.arch"]) == {"vgg", "resnet"}
    assert set(pd.read_csv(out / "comparisons.csv")["model.dropout"]) == {0.1, 0.5}
    again = invoke("run", config)
    assert again.exit_code == 0 and "12 already done" in again.output


def test_a_grid_folder_takes_no_plain_sweep_and_no_other_grid(
    tmp_path: Path, pickle_root: Path
) -> None:
    """A plain sweep into a grid's folder overwrote its config.yaml (the grid lost) and mixed
    its runs in; now it, or a grid over other keys, is refused before anything is written.
    The same grid with more values joins, its config.yaml listing them all."""
    schemes, out = {"bn_only": ["bn", "act"]}, tmp_path / "results"

    def sweep(**sections: Any) -> Any:
        return invoke(
            "run",
            tiny_config(tmp_path, pickle_root, schemes=schemes, train={"epochs": 1}, **sections),
        )

    assert sweep(grid={"model.dropout": [0.1]}).exit_code == 0
    written = (out / "config.yaml").read_text()
    plain = sweep()
    assert plain.exit_code == 2
    assert f"{out} holds a grid over model.dropout, and this is a sweep without a grid" in (
        plain.output
    )
    other = sweep(grid={"train.lr": [0.1]})
    assert other.exit_code == 2 and "and this is a grid over train.lr" in other.output
    assert (out / "config.yaml").read_text() == written and not (out / "bn_only").exists()
    assert sweep(grid={"model.dropout": [0.3, 0.1]}).exit_code == 0
    grid = yaml.safe_load((out / "config.yaml").read_text())["grid"]
    assert grid == {"model.dropout": [0.1, 0.3]}


def test_grid_errors_name_the_key(tmp_path: Path, pickle_root: Path) -> None:
    config = tiny_config(tmp_path, pickle_root, grid={"model.dropot": [0.1]})
    result = invoke("validate", config)
    assert result.exit_code == 2 and "grid: 'model.dropot' is not a data, model or train key" in (
        result.output
    )
    config = tiny_config(tmp_path, pickle_root, grid={"model.dropout": [0.1, 1.5]})
    result = invoke("validate", config)
    assert result.exit_code == 2
    assert "model.dropout: Input should be less than 1 (got 1.5) at grid point dropout=1.5" in (
        result.output
    )


def test_markup_in_paths_and_grid_values_prints_as_text(tmp_path: Path) -> None:
    """rich markup in user text ([/red] in a folder name, [/] in a grid value) is printed as
    it is, never parsed (it raised MarkupError)."""
    root = write_pickle_layout(tmp_path / "c[/]ifar")
    config = tiny_config(
        tmp_path,
        root,
        schemes={"bn_only": ["bn", "act"]},
        train={"epochs": 1},
        grid={"data.root": [str(root)]},
    )
    out = tmp_path / "out[/red]x"
    for args in (("validate",), ("plan", "--out", out), ("run", "--out", out)):
        result = invoke(args[0], config, *args[1:])
        assert result.exit_code == 0, (args, result.output)
        assert str(root) in result.output
    compared = invoke("compare", out)
    assert compared.exit_code == 0, compared.output
    assert f"written: {out / 'summary.csv'}" in compared.output and str(root) in compared.output


def test_compare_prints_the_figures_when_it_cannot_write_them(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder or a full disk: the table and verdicts are printed, then one line
    says the files were not written and why, exit code 2; nothing there changes."""
    import errno

    import bnorder.analysis.compare

    out = tmp_path / "results"
    assert invoke("run", config).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def full_disk(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(bnorder.analysis.compare, "atomic_write_text", full_disk)
    result = invoke("compare", out)
    assert result.exit_code == 2
    assert "95% CI" in result.output and "verdicts: each scheme" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last == (
        f"error: summary.csv and comparisons.csv not written: {out / 'summary.csv'}: "
        "No space left on device"
    )
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
