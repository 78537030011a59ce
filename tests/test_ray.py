"""--executor ray on a real Ray cluster on this machine, started here and stopped after."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import invoke, tiny_config

TIMING = ("epoch_seconds", "images_per_second")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster with 2 CPUs and no GPU, as `ray start` makes it."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):  # CI installs bnorder[ray]: a skip there would hide a break
            pytest.fail("Ray is not installed, though CI installs bnorder[ray]")
        pytest.skip("Ray is not installed (pip install 'bnorder[ray]')")
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    port = free_port()
    cache = tmp_path_factory.mktemp("ray-cache")
    started = subprocess.run(
        [
            *ray,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "BNORDER_CACHE": str(cache)},  # never the user's cache
    )
    if started.returncode:
        pytest.fail(f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray, "stop"], capture_output=True, timeout=180)


def summary_without_timing(folder) -> dict:
    result = invoke("compare", folder, "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    for row in payload["summary"]:
        for key in [k for k in row if k.startswith(TIMING)]:
            del row[key]
    return payload


def test_a_sweep_on_ray_matches_a_local_one(tmp_path, pickle_root, ray_cluster):
    """4 runs as Ray tasks of 1 CPU each (so 1 torch thread) give the files and the compare
    output of the same 4 runs in one local process with 1 thread; the folders then merge."""
    config = tiny_config(
        tmp_path,
        pickle_root,
        schemes=["bn_relu_drop", "bn_only"],
        seeds=[0, 1],
        data={"root": str(pickle_root), "download": False, "cache_dir": str(tmp_path / "c")},
    )
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert invoke("run", config, "--out", local, "--set", "train.threads=1").exit_code == 0
    result = invoke(
        "run", config, "--out", on_ray, "--executor", "ray", "--ray-address", ray_cluster
    )
    assert result.exit_code == 0, result.output
    assert f"on Ray at {ray_cluster}, cpu (1 CPU per run)" in result.output
    assert "4 completed, 0 already done, 0 failed" in result.output
    assert summary_without_timing(on_ray) == summary_without_timing(local)
    for run_file in sorted(local.rglob("run.json")):
        ours = json.loads(run_file.read_text())
        theirs = json.loads((on_ray / run_file.relative_to(local)).read_text())
        assert theirs["status"] == "completed" and theirs["speed"]["threads"] == 1
        assert theirs["config_hash"] == ours["config_hash"] and "host" in theirs
        assert (on_ray / run_file.relative_to(local)).with_name("metrics.csv").exists()
    # a local sweep into the Ray folder finds them done: the folders merge
    assert "0 completed, 4 already done" in invoke("run", config, "--out", on_ray).output


def test_ray_refuses_what_its_cluster_cannot_run(tmp_path, pickle_root, ray_cluster):
    config = tiny_config(tmp_path, pickle_root)
    for args, message in [
        (["--device", "cuda"], "the Ray cluster has no GPU"),
        (
            ["--ray-cpus", "3"],
            "--ray-cpus: 3 per run, but no node of the cluster has more than 2 CPUs",
        ),
        (["--ray-gpus", "1"], "--ray-gpus: 1.0, but device is cpu"),
        (["--set", "data.root=/nowhere"], "/nowhere"),  # the data, as the cluster sees it
    ]:
        result = invoke("run", config, "--executor", "ray", "--ray-address", ray_cluster, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not (tmp_path / "results").exists()


def test_an_address_where_nothing_answers_is_one_line(tmp_path, pickle_root, ray_cluster):
    config = tiny_config(tmp_path, pickle_root)
    result = invoke("run", config, "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}")
    assert result.exit_code == 2, result.output
    assert "nothing answers there" in result.output
