"""`bnorder validate`, and the same checks at the start of `bnorder run`: every malformed
config gets one line naming the key or path, exit code 2, and nothing trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import invoke, tiny_config


@pytest.fixture
def config(tmp_path: Path, pickle_root: Path) -> Path:
    return tiny_config(tmp_path, pickle_root, seeds=[0, 1])


def test_validate_a_good_config(tmp_path: Path, config: Path) -> None:
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output
    assert "valid. 6 runs (3 schemes × 2 seeds) on cpu, 0 already done" in result.output
    assert f"data: batches at {tmp_path / 'cifar' / 'cifar-10-batches-py'}" in result.output
    assert not (tmp_path / "results").exists()  # validate writes nothing


def test_validate_counts_runs_already_done(tmp_path: Path, config: Path) -> None:
    assert invoke("run", config, "--schemes", "bn_only", "--seeds", "0").exit_code == 0
    result = invoke("validate", config)
    assert result.exit_code == 0 and "1 already done" in result.output


MALFORMED = [
    # (YAML text of the whole config or None, --set overrides, expected fragment)
    ("train: {epochs: -1}", [], "train.epochs: Input should be greater than 0 (got -1)"),
    ("train: {lr: -0.1}", [], "train.lr: Input should be greater than 0 (got -0.1)"),
    ("train: {lr: 0}", [], "train.lr: Input should be greater than 0"),
    ("train: {batch_size: 0}", [], "train.batch_size: Input should be greater than 0"),
    ("train: {epochs: two}", [], "train.epochs: Input should be a valid integer (got 'two')"),
    ("train: {epohcs: 2}", [], "train.epohcs: unknown key (did you mean 'epochs'?)"),
    ("trian: {epochs: 2}", [], "trian: unknown key (did you mean 'train'?)"),
    ("train: {schedule: step}", [], "train.schedule: Input should be 'cosine', 'onecycle'"),
    ("train: {keep_checkpoints: some}", [], "train.keep_checkpoints: Input should be 'last'"),
    ("train: {momentum: 1.0}", [], "train.momentum: Input should be less than 1"),
    ("train: {vshift_every: -1}", [], "train.vshift_every: Input should be greater than or equal"),
    ("train: {vshift_sample: 1.5}", [], "train.vshift_sample: Input should be a valid integer"),
    ("train: {recalibration: momentum}", [], "train.recalibration: Input should be 'sequential'"),
    ("train: {recalibrate_bn: yes please}", [], "train.recalibrate_bn: Input should be a valid"),
    ("train: {recalibration_sample: 0}", [], "train.recalibration_sample: Input should be greater"),
    ("model: {dropout: 1.0}", [], "model.dropout: Input should be less than 1 (got 1.0)"),
    ("model: {dropout: -0.5}", [], "model.dropout: Input should be greater than or equal to 0"),
    (
        "model: {arch: resnet9000}",
        [],
        "model.arch: Input should be 'vgg', 'resnet', 'wrn' or 'densenet' (got 'resnet9000')",
    ),
    ("model: {activation: swish}", [], "model.activation: Input should be 'relu'"),
    ("model: {widths: []}", [], "model.widths: List should have at least 1 item"),
    ("schemes: {}", [], "schemes: Dictionary should have at least 1 item"),
    ("schemes: {x: [bn, relu]}", [], "schemes.x.ops: unknown token 'relu'"),
    ("schemes: {x: [bn, act, bn]}", [], "schemes.x.ops: token 'bn' appears twice"),
    ("schemes: [bn_only, bn_only]", [], "schemes: scheme 'bn_only' is listed twice"),
    ("schemes: [bn_only, bn_relu]", [], "schemes.bn_relu: unknown scheme 'bn_relu'"),
    ("schemes: {x: [bn]}\nschemes: {y: [act]}", [], "not valid YAML: duplicate key 'schemes'"),
    ("schemes:\n  x: [bn]\n  x: [act]", [], "not valid YAML: duplicate key 'x'"),
    ("schemes: {'../../etc': [bn]}", [], "schemes.../../etc: a scheme name must be"),
    ("schemes: {'a/b': [bn]}", [], "schemes.a/b: a scheme name must be"),
    (
        "device: tpu",
        [],
        "device: device must be auto, cpu, cuda, cuda:N (N < 1000) or mps (got 'tpu')",
    ),
    ("device: cuda:99", [], "device: 'cuda:99' asked for, but"),
    ("schemes: {Plain: [act], plain: [act]}", [], "scheme names ['Plain', 'plain'] differ only"),
    ("seeds: [1, 1]", [], "seeds: seeds must be unique"),
    ("seeds: 3", [], "seeds: Input should be a valid list (got 3)"),
    ("data: {train_subset: 0}", [], "data.train_subset: Input should be greater than 0"),
    (
        "data: {dataset: mnist}",
        [],
        "data.dataset: Input should be 'cifar10', 'cifar100', 'svhn' or 'folder' (got 'mnist')",
    ),
    ("train: [1, 2", [], "not valid YAML"),
    ("- just\n- a list", [], "expected a mapping of sections, got list"),
    (None, ["train.epochs"], "--set 'train.epochs': expected KEY=VALUE"),
    (None, ["seeds.x=1"], "--set seeds.x: seeds is not a section"),
    (None, ["data.root=/no/such/cifar"], "CIFAR-10 not found at /no/such/cifar"),
    (None, ["output=/dev/null"], "output: /dev/null exists and is not a folder"),
]


@pytest.mark.parametrize(("text", "overrides", "expected"), MALFORMED)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_configs(
    tmp_path: Path,
    config: Path,
    command: str,
    text: str | None,
    overrides: list[str],
    expected: str,
    monkeypatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # configs without output: would write to ./results
    if text is not None:
        config = tmp_path / "bad.yaml"
        config.write_text(text + "\n")
    args = [command, config]
    for override in overrides:
        args += ["--set", override]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output  # one line
    assert not (tmp_path / "results").exists()


def test_validate_checks_every_grid_point_and_the_output_folder(
    tmp_path: Path, pickle_root: Path
) -> None:
    """Each grid point's data, not only the config's; and that the output folder takes a
    file (a temporary one, removed): both said valid before."""
    missing = tmp_path / "nowhere"
    config = tiny_config(
        tmp_path, pickle_root, grid={"data.root": [str(pickle_root), str(missing)]}
    )
    result = invoke("validate", config)
    assert result.exit_code == 2 and f"CIFAR-10 not found at {missing}" in result.output
    if not Path("/proc/self").exists():
        pytest.skip("no /proc to stand for a folder nobody can write to")
    config = tiny_config(tmp_path, pickle_root)
    result = invoke("validate", config, "--out", "/proc/bnorder-results")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: /proc: cannot write there")
    assert len(result.output.strip().splitlines()) == 1
    assert invoke("validate", config).exit_code == 0
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "results").exists()
