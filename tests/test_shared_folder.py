"""Who an output folder belongs to: sweeps of one experiment (workers, shards, reruns) share
it and merge; a sweep of another config is refused, even when both start at once into an
empty folder (issue 26, point 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import invoke, tiny_config

from bnorder.runs.config import load_config
from bnorder.runs.plan import ResultsConflict, SweepOptions
from bnorder.runs.sweep import prepare_sweep, run_experiment


def two_configs(tmp_path: Path, pickle_root: Path, **b_train):
    config = tiny_config(tmp_path, pickle_root, train={"epochs": 1})
    a = load_config(config, ["schemes=[bn_only]"])
    b = load_config(
        config, ["schemes=[relu_drop_bn]", *(f"train.{k}={v}" for k, v in b_train.items())]
    )
    return a, b


def test_a_config_started_with_another_into_an_empty_folder_is_refused(
    tmp_path: Path, pickle_root: Path
) -> None:
    """A checks the empty folder, B claims it and trains, then A starts: A is refused as it
    would be had it started after B, and nothing of A's is trained."""
    a, b = two_configs(tmp_path, pickle_root, lr=0.01)
    out = Path(a.output)
    with prepare_sweep(a, SweepOptions()) as sweep:  # the folder is empty: A's checks pass
        run_experiment(b)  # B, between A's check and A's claim
        with pytest.raises(ResultsConflict) as info:
            sweep.run()
    message = str(info.value)
    assert message.startswith(f"{out} ") and "train.lr" in message and "\n" not in message
    assert not (out / "bn_only").exists()
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["train"]["lr"] == 0.01 and list(written["schemes"]) == ["relu_drop_bn"]
    later = invoke("run", tmp_path / "config.yaml", "--schemes", "bn_only")  # A again, later
    assert later.exit_code == 2 and "train.lr" in later.output
    assert later.output.count("\n") == 1
    assert invoke("validate", tmp_path / "config.yaml").exit_code == 2  # said before a run too


def test_a_folder_claimed_before_any_run_is_written_refuses_another_config(
    tmp_path: Path, pickle_root: Path
) -> None:
    """B has written config.yaml but no run yet (its data still decoding): A is refused."""
    a, b = two_configs(tmp_path, pickle_root, momentum=0.5)
    with prepare_sweep(b, SweepOptions()) as sweep:
        sweep.plan.runs.clear()  # B claims the folder and trains nothing (yet)
        sweep.run()
    assert (Path(b.output) / "config.yaml").is_file()
    with pytest.raises(ResultsConflict, match="train.momentum"):
        run_experiment(a)
    assert not (Path(a.output) / "bn_only").exists()


def test_sweeps_of_one_experiment_started_at_once_merge(tmp_path: Path, pickle_root: Path) -> None:
    """Workers, shards and reruns of one experiment: both checked on the empty folder, both
    train, and config.yaml lists the schemes and seeds of both."""
    a, b = two_configs(tmp_path, pickle_root)
    b = b.model_copy(update={"seeds": [1]})
    with prepare_sweep(a, SweepOptions()) as sweep:
        run_experiment(b)
        report = sweep.run()
    assert [run.name for run in report.completed] == ["bn_only/seed0"]
    written = yaml.safe_load((Path(a.output) / "config.yaml").read_text())
    assert set(written["schemes"]) == {"bn_only", "relu_drop_bn"} and written["seeds"] == [0, 1]


def test_a_grid_sweeps_own_values_may_differ_between_sweeps_of_it(
    tmp_path: Path, pickle_root: Path
) -> None:
    """The base value of a swept key is no part of the experiment: each point sets its own."""
    config = tiny_config(tmp_path, pickle_root, train={"epochs": 1}, schemes=["bn_only"])
    first = invoke("run", config, "--set", "grid={train.lr: [0.05]}", "--set", "train.lr=0.3")
    assert first.exit_code == 0, first.output
    second = invoke("run", config, "--set", "grid={train.lr: [0.01]}")
    assert second.exit_code == 0, second.output
    written = yaml.safe_load((tmp_path / "results" / "config.yaml").read_text())
    assert written["grid"] == {"train.lr": [0.05, 0.01]}


def test_overwrite_takes_the_folder_over(tmp_path: Path, pickle_root: Path) -> None:
    a, b = two_configs(tmp_path, pickle_root, lr=0.01)
    b = b.model_copy(update={"schemes": a.schemes})
    run_experiment(a)
    run_experiment(b, SweepOptions(overwrite=True))
    info = json.loads((Path(a.output) / "bn_only" / "seed0" / "run.json").read_text())
    assert info["config"]["train"]["lr"] == 0.01
    assert yaml.safe_load((Path(a.output) / "config.yaml").read_text())["train"]["lr"] == 0.01


def test_a_config_beside_its_results_is_never_written_over(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    """experiments/x/config.yaml with output experiments/x (issue 26, point 8): bnorder would
    replace it with the resolved dump; refused, naming both, before anything is written."""
    monkeypatch.chdir(tmp_path)
    folder = Path("experiments") / "x"
    folder.mkdir(parents=True)
    source = tiny_config(tmp_path, pickle_root, output=str(folder), schemes=["bn_only"])
    config = folder / "config.yaml"
    text = "# lr from the sweep of 3 May\n" + source.read_text()
    config.write_text(text)
    for command in ("run", "validate"):
        result = invoke(command, config)
        assert result.exit_code == 2, result.output
        assert str(config) in result.output and f"output: {folder}" in result.output
        assert result.output.count("\n") == 1
    assert config.read_text() == text and sorted(p.name for p in folder.iterdir()) == [
        "config.yaml"
    ]
    elsewhere = invoke("run", tmp_path / config, "--out", tmp_path / "elsewhere")
    assert elsewhere.exit_code == 0, elsewhere.output
    assert config.read_text() == text


def test_a_sweeps_own_config_yaml_trains_it_again(tmp_path: Path, pickle_root: Path) -> None:
    """What the report prints to reproduce a sweep, bnorder run OUT/config.yaml, still works:
    that file is bnorder's own, not the user's."""
    config = tiny_config(tmp_path, pickle_root, schemes=["bn_only"], train={"epochs": 1})
    assert invoke("run", config).exit_code == 0
    again = invoke("run", tmp_path / "results" / "config.yaml")
    assert again.exit_code == 0, again.output
    assert "1 already" in again.output or "skipped" in again.output or "done" in again.output


def test_a_hand_written_config_yaml_in_the_folder_is_merged_without_a_traceback(
    tmp_path: Path, pickle_root: Path
) -> None:
    """OUT/config.yaml in a config's own short forms (a list of schemes, one seed): what
    cannot be merged is replaced, not a TypeError."""
    config = tiny_config(tmp_path, pickle_root, schemes=["bn_only"], train={"epochs": 1})
    out = tmp_path / "results"
    out.mkdir()
    (out / "config.yaml").write_text("schemes: [plain]\nseeds: 3\ngrid: {}\n")
    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert list(written["schemes"]) == ["bn_only"] and written["seeds"] == [0]


def _claim_in_a_child(config) -> None:
    import sys

    from bnorder.runs.claim import claim_experiment

    try:
        claim_experiment(config)
    except ResultsConflict:
        sys.exit(2)


def test_a_claim_waits_for_the_one_in_progress_then_checks_what_it_wrote(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    """Two processes: B's claim starts while A's holds the lock, between A's check and A's
    write; B waits, then reads A's config.yaml and is refused."""
    import multiprocessing

    from bnorder.runs import claim

    a, b = two_configs(tmp_path, pickle_root, lr=0.01)
    context = multiprocessing.get_context("fork")
    children = []
    written = claim.write_experiment_config

    def write_after_b_tried(config, earlier) -> None:
        child = context.Process(target=_claim_in_a_child, args=(b,))
        child.start()
        child.join(1.5)
        assert child.is_alive()  # waiting for the lock A holds
        children.append(child)
        written(config, earlier)

    monkeypatch.setattr(claim, "write_experiment_config", write_after_b_tried)
    claim.claim_experiment(a)
    children[0].join(60)
    assert children[0].exitcode == 2
    assert yaml.safe_load((Path(a.output) / "config.yaml").read_text())["train"]["lr"] == a.train.lr


def test_a_claim_refused_once_the_sweep_started_is_one_line(
    tmp_path: Path, pickle_root: Path, monkeypatch
) -> None:
    """bnorder run, when another config claims the folder after make_plan's check: one line,
    exit 2, no run started. (The empty sweep bar drawn before it is issue 26's point 18.)"""
    from bnorder.runs import plan

    config = tiny_config(tmp_path, pickle_root, schemes=["bn_only"], train={"epochs": 1})
    with prepare_sweep(load_config(config, ["train.lr=0.01"]), SweepOptions()) as sweep:
        sweep.plan.runs.clear()
        sweep.run()  # another config claims the folder, no run written yet
    monkeypatch.setattr(plan, "check_claim", lambda config, earlier: None)  # as if checked before
    result = invoke("run", config)
    assert result.exit_code == 2, result.output
    assert "is the folder of a sweep of a different config" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "results" / "bn_only").exists()
