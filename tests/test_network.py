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
