"""Results written before the orchestration was restructured (tests/fixtures/v0-results, made
by make_v0_results.py at ec4c4b6) are read by compare unchanged, and skipped or resumed by run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import invoke, write_pickle_layout

from bnorder.runs.records import read_info

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = FIXTURES.parents[1]
COMMITTED = sorted([*(ROOT / "results").rglob("run.json"), *FIXTURES.rglob("run.json")])


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "v0-results", tmp_path / "v0-results"))


DIFFERENCE = ["experiment", "config", "scheme", "baseline", "metric", "n_baseline", "n", "n_paired"]
DIFFERENCE += ["diff_points"]


def test_compare_reads_v0_results_unchanged(tmp_path):
    """Every figure that version's compare wrote is written again (its gap as gap_train_mode);
    later versions may add columns, and word verdicts anew (the re-calibrated accuracies here
    are all equal: a degenerate cell, where ec4c4b6 said "no spread to test")."""
    out = _copy(tmp_path)
    # that version tested against the best mean: with two schemes, the one pair --baseline best
    # tests too (now labelled exploratory)
    result = invoke("compare", out, "--baseline", "best")
    assert result.exit_code == 0, result.output
    assert "not averaged bn_relu_drop/seed2: interrupted" in result.output
    for name in ("summary.csv", "comparisons.csv"):
        expected = pd.read_csv(FIXTURES / "v0-expected" / name).drop(
            columns="verdict", errors="ignore"
        )
        # that version's gap took the running train-mode accuracy: gap_train_mode now; its
        # runs measured nothing in eval mode, so they have no eval-mode gap
        expected.columns = expected.columns.str.replace(r"^gap_", "gap_train_mode_", regex=True)
        if name == "comparisons.csv":
            # bn_only's two runs sit at exactly one value: a degenerate cell now, which gets
            # no t-test (that version's p = 0.5 and its CI are gone, by design); the
            # difference itself and its counts stand
            expected = expected[DIFFERENCE]
        written = pd.read_csv(out / name)[expected.columns]
        pd.testing.assert_frame_equal(written, expected)
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["outcome"]) == {"degenerate"}
    said = " ".join(result.output.split())
    assert "bn_relu_drop vs bn_only with BN re-estimated (dropout off) from un-augmented" in said
    assert "degenerate, +0.00 points; every run of one side is at exactly" in said
    assert "gap_mean" not in pd.read_csv(out / "summary.csv").columns  # nothing in eval mode
    assert "train*: the last epoch's running accuracy in train mode" in " ".join(
        result.output.split()
    )


def test_run_skips_and_resumes_v0_results(tmp_path):
    out = _copy(tmp_path)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["data"]["root"] = str(write_pickle_layout(tmp_path / "data"))
    config["output"] = str(out)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = {p: p.read_bytes() for p in out.glob("*/seed[01]/*")}
    # these runs measured on plain images: today's default would measure otherwise
    refused = invoke("run", path)
    assert refused.exit_code == 2 and "(train.diagnostics_images)" in refused.output
    config["train"]["diagnostics_images"] = "plain"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = invoke("run", path)
    assert result.exit_code == 0, result.output
    assert "2 completed (1 resumed from a checkpoint), 4 already done, 0 failed" in result.output
    assert "resuming bn_relu_drop/seed2 after epoch 1" in result.output
    assert {p: p.read_bytes() for p in out.glob("*/seed[01]/*")} == done  # untouched
    resumed = json.loads((out / "bn_relu_drop" / "seed2" / "run.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    metrics = pd.read_csv(out / "bn_relu_drop" / "seed2" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]


def test_a_run_file_from_a_newer_version_is_neither_done_nor_replaced(tmp_path):
    """A status this version does not know (a newer bnorder's): the run is no conflict with its
    own config (it is resumed), but one of another config is refused, not deleted."""
    out = _copy(tmp_path)
    run_file = out / "bn_only" / "seed0" / "run.json"
    record = json.loads(run_file.read_text())
    record["status"] = "archived"
    record["config"]["train"]["lr"] = 0.5
    run_file.write_text(json.dumps(record))
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["data"]["root"] = str(write_pickle_layout(tmp_path / "data"))
    config["train"]["diagnostics_images"] = "plain"  # as v0 measured
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "output": str(out)}, sort_keys=False))
    result = invoke("run", path)
    assert result.exit_code == 2, result.output
    assert "bn_only/seed0 (train.lr)" in result.output
    assert json.loads(run_file.read_text())["status"] == "archived"
    compared = invoke("compare", out)
    assert compared.exit_code == 0 and "bn_only/seed0/run.json: unreadable" in compared.output


def test_a_status_of_the_wrong_type_is_an_unreadable_run(tmp_path):
    out = _copy(tmp_path)
    run_file = out / "bn_only" / "seed0" / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "status": []}))
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    assert "bn_only/seed0/run.json: unreadable run file" in result.output


@pytest.mark.parametrize(
    "damage",
    [
        {"config": "train"},
        {"grid": ["model.dropout"]},
        {"grid": {"model.dropout": {"x": 1}}},
        {"experiment_hash": {"a": 1}},
        {"seed": True},
        "deep",
    ],
)
def test_run_files_of_wrong_types_are_skipped_by_name(tmp_path, damage):
    """compare over a run.json whose fields have the wrong type, or that nests too deeply:
    that run is reported by path and left out, the others compared (it was a traceback)."""
    out = _copy(tmp_path)
    run_file = out / "bn_only" / "seed0" / "run.json"
    if damage == "deep":
        run_file.write_text(
            '{"scheme": "bn_only", "seed": 0, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        )
    else:
        run_file.write_text(json.dumps({**json.loads(run_file.read_text()), **damage}))
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    assert "bn_only/seed0/run.json: unreadable run file" in result.output
    assert "bn_relu_drop" in result.output


def test_every_key_added_since_is_left_out_of_identities_at_its_default() -> None:
    """A data, model or train key that v0's runs lack must be in plan.LATER_KEYS with its
    default: else every run written before it gets another hash, and is retrained."""
    from bnorder.runs.config import ExperimentConfig, config_to_dict
    from bnorder.runs.plan import LATER_KEYS, NOT_IDENTITY, _flatten, run_identity

    stored = json.loads((FIXTURES / "v0-results" / "bn_only" / "seed0" / "run.json").read_text())
    old = set(_flatten(stored["config"]))
    now = _flatten(config_to_dict(ExperimentConfig()))
    added = {
        key
        for key in now
        if key.startswith(("data.", "model.", "train.")) and key not in old | NOT_IDENTITY
    }
    assert added == set(LATER_KEYS)
    # the one key whose default does not do what v0 did: BN's diagnostics on augmented images
    # are another measurement, so runs made now have another identity than v0's
    changed = {"train.diagnostics_images"}
    identity = run_identity(config_to_dict(ExperimentConfig()), "cpu")
    assert set(LATER_KEYS) & set(identity) == changed
    plain = ExperimentConfig(train={"diagnostics_images": "plain"})
    assert not set(LATER_KEYS) & set(run_identity(config_to_dict(plain), "cpu"))


def test_the_flip_a_data_set_chooses_is_its_identity() -> None:
    """augment_flip left to the data set counts as what the data set chose: a CIFAR-10 run
    with it unset is one with it true, and as runs from before the key; SVHN's is not."""
    from bnorder.runs.config import ExperimentConfig, config_to_dict
    from bnorder.runs.plan import run_identity

    def identity(**data: object) -> dict:
        return run_identity(config_to_dict(ExperimentConfig(data=data)), "cpu")

    assert identity() == identity(augment_flip=True)
    assert identity(dataset="svhn") == identity(dataset="svhn", augment_flip=False)
    assert identity(dataset="svhn") != identity(dataset="svhn", augment_flip=True)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_run_file_reads_and_writes_back_its_keys(path: Path) -> None:
    """RunInfo (pydantic) reads each run.json committed under results/ and tests/fixtures, and
    writes back every key it had, with the same values (v0's lack data_fingerprint only)."""
    stored = json.loads(path.read_text())
    info = read_info(path)
    assert info.status is not None and info.scheme == stored["scheme"]
    written = info.to_json()
    assert {k: written[k] for k in stored} == stored
    assert set(written) - set(stored) <= {"data_fingerprint"}


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ({"threads": "8"}, "threads: Input should be a valid integer"),
        ({"resumed_from_epoch": True}, "resumed_from_epoch: Input should be a valid integer"),
        ({"ops": ["bn", 1]}, "ops.1: Input should be a valid string"),
        ({"seed": "0"}, "no scheme and seed"),
    ],
)
def test_a_bad_run_file_is_refused_in_one_line_naming_its_key(tmp_path, damage, said) -> None:
    run_file = _copy(tmp_path) / "bn_only" / "seed0" / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), **damage}))
    with pytest.raises(ValueError, match="^" + said.replace(".", r"\.") + "$"):
        read_info(run_file)
    result = invoke("compare", run_file.parents[2])
    assert f"bn_only/seed0/run.json: unreadable run file ({said})" in " ".join(
        result.output.split()
    )
