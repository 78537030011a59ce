"""One way to build a run's network (runs/network.py): the run loop, ``bnorder model`` and
``bnorder audit`` build the same one, for the data's own shape; a checkpoint alone rebuilds it."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import CLASSES, fake_images, invoke, tiny_config
from PIL import Image

from bnorder.runs.network import load_network


def grey_folder(root: Path) -> Path:
    """A class-folder data set of one-channel 32×32 PNGs."""
    for split, per_class, seed in (("train", 6, 1), ("test", 3, 2)):
        images, labels = fake_images(per_class, seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / CLASSES[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0], mode="L").save(path)
    return root


def grey_run(tmp_path: Path) -> tuple[Path, Path]:
    config = tiny_config(
        tmp_path,
        grey_folder(tmp_path / "grey"),
        data={"dataset": "folder"},
        schemes={"drop_bn": ["dropout", "bn", "act"]},
        train={"epochs": 1, "batch_size": 20, "vshift_sample": 20},
    )
    assert invoke("run", config).exit_code == 0
    return config, tmp_path / "results" / "drop_bn" / "seed0" / "checkpoint.pt"


def test_model_and_audit_build_a_greyscale_run_as_it_trained(tmp_path: Path) -> None:
    config, checkpoint = grey_run(tmp_path)
    shown = invoke("model", config)
    assert shown.exit_code == 0, shown.output
    assert "Conv2d(1, 4" in shown.output and "1×32×32 images" in shown.output
    rebuilt = load_network(checkpoint)
    parameters = sum(p.numel() for p in rebuilt.parameters())
    assert f": {parameters:,} parameters" in shown.output
    audited = invoke("audit", config, "--weights", checkpoint, "--input-shape", "1,32,32")
    assert audited.exit_code == 0, audited.output
    assert "features.stage1.0.bn" in audited.output
    folder = invoke("audit", checkpoint.parent, "--sample", "20")  # the run rebuilt, greyscale
    assert folder.exit_code == 0, folder.output
    assert "features.stage1.0.bn" in folder.output and "measured on 20 training" in folder.output


def test_a_checkpoint_alone_rebuilds_its_network(tmp_path: Path) -> None:
    _, checkpoint = grey_run(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    network = load_network(checkpoint).eval()
    assert network.state_dict().keys() == state["model"].keys()
    inputs = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    again = load_network(checkpoint).eval()
    assert torch.equal(network(inputs), again(inputs))
    audited = invoke("audit", checkpoint, "--input-shape", "1,32,32")
    assert audited.exit_code == 0, audited.output


def test_a_checkpoint_without_its_network_says_so(tmp_path: Path) -> None:
    _, checkpoint = grey_run(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    del state["network"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    result = invoke("audit", old)
    assert result.exit_code == 2
    assert "written before checkpoints described their network" in result.output


def test_a_checkpoint_rebuilds_the_runs_own_network_with_nothing_else_at_hand(
    tmp_path: Path,
) -> None:
    """The network load_network rebuilds is the one the run trained: its outputs are the
    run's network's, built from the config with the checkpoint's weights, even once the
    config, the data and the run folder are gone."""
    import json
    import shutil

    from bnorder.runs.config import load_config
    from bnorder.runs.network import config_network

    config, checkpoint = grey_run(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    record = json.loads((checkpoint.parent / "run.json").read_text())
    assert state["config"] == record["config"]  # the run's resolved config travels with it
    own = config_network(load_config(config), "drop_bn")[0].build()
    own.load_state_dict(state["model"])
    inputs = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = own.eval()(inputs)
    alone = tmp_path / "elsewhere" / "checkpoint.pt"
    alone.parent.mkdir()
    shutil.copy(checkpoint, alone)
    for gone in (tmp_path / "grey", tmp_path / "results"):
        shutil.rmtree(gone)
    config.unlink()
    assert torch.equal(load_network(alone).eval()(inputs), expected)


def test_an_old_checkpoint_without_its_network_still_resumes(tmp_path: Path) -> None:
    """A checkpoint of before checkpoints described their network resumes as it always did,
    to the same numbers; the run's later checkpoints describe it."""
    import json

    import pandas as pd

    config = tiny_config(
        tmp_path,
        grey_folder(tmp_path / "grey"),
        data={"dataset": "folder"},
        schemes={"drop_bn": ["dropout", "bn", "act"]},
        train={"epochs": 2, "batch_size": 20, "vshift_sample": 20, "keep_checkpoints": "all"},
    )
    assert invoke("run", config).exit_code == 0
    folder = tmp_path / "results" / "drop_bn" / "seed0"
    finished = pd.read_csv(folder / "metrics.csv")
    (folder / "checkpoint-epoch2.pt").unlink()
    (folder / "run.json").unlink()  # not done: trained on from its newest checkpoint
    first = folder / "checkpoint-epoch1.pt"
    state = torch.load(first, weights_only=True)
    del state["network"]
    torch.save(state, first)
    again = invoke("run", config)
    assert again.exit_code == 0, again.output
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from_epoch"] == 1
    timing = ["epoch_seconds", "images_per_second"]
    resumed = pd.read_csv(folder / "metrics.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), finished.drop(columns=timing))
    assert "network" in torch.load(folder / "checkpoint-epoch2.pt", weights_only=True)


def test_model_builds_a_catalogue_scheme_the_config_does_not_list(tmp_path: Path) -> None:
    config, _ = grey_run(tmp_path)
    shown = invoke("model", config, "--scheme", "drop_head")
    assert shown.exit_code == 0, shown.output
    assert "drop_head: CONV → BN → ACT … POOL → DROPOUT → FC" in shown.output
    assert "Conv2d(1, 4" in shown.output
