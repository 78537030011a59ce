"""Work that grows past reason is refused up front, by count, with one line: grids and sweeps
over a documented limit, scheme and grid-point names no file system takes or that collide
with bnorder's own files, and subsets larger than the data (issue 26, point 9)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import invoke, tiny_config, write_folder_layout

from bnorder.runs.config import ConfigError, build_config, expand_grid
from bnorder.runs.sections import MAX_GRID_POINTS, MAX_NAME, MAX_RUNS


def refusal(raw: dict) -> str:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="c.yaml")
    assert time.perf_counter() - started < 5  # counted, not expanded
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_grid_past_the_limit_is_refused_by_count() -> None:
    values = [i / 1000 for i in range(1, 101)]
    grid = {"train.lr": values, "train.momentum": [v / 2 for v in values], "model.dropout": values}
    message = refusal({"grid": grid})
    assert message.startswith("c.yaml: grid: 1,000,000 grid points")
    assert f"{MAX_GRID_POINTS:,}" in message


def test_a_sweep_past_the_limit_is_refused_by_count() -> None:
    message = refusal({"seeds": list(range(400_000))})  # 3 default schemes
    assert message.startswith("c.yaml: 1,200,000 runs")
    assert f"{MAX_RUNS:,}" in message


def test_runs_are_counted_across_the_grid() -> None:
    seeds = MAX_RUNS // 6 + 1
    raw = {
        "schemes": ["bn_only", "plain"],
        "seeds": list(range(seeds)),
        "grid": {"model.dropout": [0.1, 0.2, 0.3]},
    }
    assert refusal(raw).startswith(f"c.yaml: {seeds * 6:,} runs")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("s" * (MAX_NAME + 1), f"is {MAX_NAME + 1} characters long, more than {MAX_NAME}"),
        ("report.html", "'report.html' is reserved for a file in the output folder"),
        ("report.md", "'report.md' is reserved"),
        ("Report.HTML", "'Report.HTML' is reserved"),  # one file on macOS and Windows
        ("summary.csv", "'summary.csv' is reserved"),
        ("comparisons.csv", "'comparisons.csv' is reserved"),
        ("report-forest.png", "'report-forest.png' is reserved"),  # a markdown report's figure
    ],
)
def test_scheme_names_no_folder_can_take(name: str, expected: str) -> None:
    message = refusal({"schemes": {name: ["bn"]}})
    assert message.startswith(f"c.yaml: schemes.{name[:40]}")
    assert expected in message


def test_a_long_scheme_name_within_the_limit_is_kept() -> None:
    assert list(build_config({"schemes": {"s" * MAX_NAME: ["bn"]}}).schemes) == ["s" * MAX_NAME]


def test_a_grid_folder_name_too_long_is_refused_at_config_time(tmp_path: Path) -> None:
    config = build_config({"grid": {"data.root": ["d" * 300]}, "output": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        expand_grid(config)
    assert "grid: the folder name of point root=ddd" in str(info.value)
    assert "more than" in str(info.value)


def test_planning_many_seeds_is_linear(tmp_path: Path, pickle_root: Path) -> None:
    """20,000 runs plan in seconds (a list.index per run made it minutes)."""
    config = tiny_config(tmp_path, pickle_root, schemes=["bn_only"], seeds=list(range(20_000)))
    started = time.perf_counter()
    result = invoke("plan", config)
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    ("key", "size", "expected"),
    [
        ("train_subset", 101, "data.train_subset: asked for 101 images, the split has 100"),
        ("test_subset", 51, "data.test_subset: asked for 51 images, the split has 50"),
    ],
)
def test_validate_says_a_subset_is_larger_than_the_split(
    tmp_path: Path, key: str, size: int, expected: str
) -> None:
    root = write_folder_layout(tmp_path / "folders")  # 10 + 5 images a class, 10 classes
    config = tiny_config(tmp_path, root, data={key: size})
    for command in ("validate", "plan"):
        result = invoke(command, config)
        assert result.exit_code == 2, result.output
        assert expected in result.output and result.output.count("\n") == 1
    assert not list(Path(tmp_path / "cache").glob("*.npz"))  # nothing decoded to say it


def test_a_subset_within_the_split_is_valid(tmp_path: Path) -> None:
    root = write_folder_layout(tmp_path / "folders")
    config = tiny_config(tmp_path, root, data={"train_subset": 100, "test_subset": 20})
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output


def test_validate_reads_a_decoded_tarballs_sizes_from_its_cache(tmp_path: Path) -> None:
    """A tarball never decoded says nothing (it would have to be read); once decoded, its
    cache's headers give the splits' sizes."""
    from conftest import tar_folder

    from bnorder.data.sources import read_data

    tarball = tar_folder(write_folder_layout(tmp_path / "f"), tmp_path / "c.tar.gz", "cifar")
    config = tiny_config(tmp_path, tarball, data={"train_subset": 101})
    assert invoke("validate", config).exit_code == 0  # unknown: run will say it
    read_data(tarball)
    result = invoke("validate", config)
    assert result.exit_code == 2, result.output
    assert "data.train_subset: asked for 101 images, the split has 100" in result.output


def test_reserved_names_cover_what_compare_and_report_write() -> None:
    from bnorder.analysis.compare import COMPARISONS_FILE, SUMMARY_FILE
    from bnorder.analysis.report import ReportFormat, default_output
    from bnorder.runs.folder import CONFIG_FILE
    from bnorder.runs.sections import RESERVED_NAMES

    written = {CONFIG_FILE, SUMMARY_FILE, COMPARISONS_FILE}
    written |= {default_output(".", fmt).name for fmt in ReportFormat}
    assert written <= RESERVED_NAMES


# issue 26, point 11: 9e10 + 1e10 parameters, about 400 GB of float32
HUGE = {"widths": [100_000, 100_000], "hidden": [100_000]}


@pytest.mark.parametrize("command", ["model", "validate", "plan", "run", "audit"])
def test_a_network_past_the_parameter_limit_is_refused_before_it_is_built(
    tmp_path: Path, command: str
) -> None:
    from bnorder.runs.network import MAX_PARAMETERS

    root = write_folder_layout(tmp_path / "folders")
    config = tiny_config(tmp_path, root, model=HUGE)
    started = time.perf_counter()
    result = invoke(command, config)
    assert time.perf_counter() - started < 10  # counted on the meta device, nothing allocated
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert "parameters" in result.output and f"{MAX_PARAMETERS:,}" in result.output
    assert "model.widths=[100000, 100000]" in result.output
    assert "model.hidden=[100000]" in result.output
    assert not (tmp_path / "results").exists()  # refused before anything is written


def test_the_parameter_count_before_building_is_the_built_networks(tmp_path: Path) -> None:
    from bnorder.nets.models import count_parameters
    from bnorder.nets.options import ModelConfig
    from bnorder.nets.schemes import CATALOGUE
    from bnorder.runs.network import ASSUMED_SHAPE, NetworkSpec

    for model in ({}, {"arch": "resnet", "widths": [8, 16]}, {"preset": "wrn-16-4"},
                  {"arch": "densenet", "depth": 40}):  # fmt: skip
        for scheme in ("bn_relu_drop", "drop_head"):
            spec = NetworkSpec(ModelConfig(**model), CATALOGUE[scheme], ASSUMED_SHAPE)
            assert spec.parameters() == count_parameters(spec.build())


def test_a_network_within_the_limit_is_built_and_valid(tmp_path: Path) -> None:
    root = write_folder_layout(tmp_path / "folders")
    config = tiny_config(tmp_path, root)
    for command in ("model", "validate"):
        result = invoke(command, config)
        assert result.exit_code == 0, result.output
    assert "parameters" in invoke("model", config).output


def test_a_grid_point_past_the_limit_is_refused_by_validate(tmp_path: Path) -> None:
    root = write_folder_layout(tmp_path / "folders")
    config = tiny_config(tmp_path, root, grid={"model.hidden": [[8], [100_000, 100_000]]})
    result = invoke("validate", config)
    assert result.exit_code == 2, result.output
    assert "model.hidden=[100000, 100000]" in result.output
