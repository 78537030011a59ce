"""`bnorder audit` and the library API (issue 14): where noise feeds BN in any model, the
variance shift it causes, and what re-calibration does; on CPU, random weights, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import invoke
from torch import nn

from bnorder import audit, recalibrate_bn, variance_shift
from bnorder.shift.audit import random_batches

USER_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """Dropout -> conv -> BN (exposed through the conv); a branch where dropout joins a
    residual sum before a BN; a classifier dropout after the last BN."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Dropout2d(0.1))
        self.bn_after_sum = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, classes))

    def forward(self, x):
        x = self.bn(self.conv(self.drop(x)))
        x = self.bn_after_sum(x + self.branch(x))
        return self.head(x)


def build(classes: int = 10):
    return Net(classes)


class Dynamic(Net):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = x * 1
        return super().forward(x)


def dynamic():
    return Dynamic()


def pooled(classes: int = 10):
    """Inputs of any size: dropout → conv → BN, pooled, then the head."""
    return nn.Sequential(
        nn.Dropout(0.2), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def no_bn():
    """A transformer-like MLP: LayerNorm and GroupNorm, no BN."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(192, 16), nn.LayerNorm(16), nn.Dropout(0.1), nn.Linear(16, 16),
        nn.LayerNorm(16), nn.Unflatten(1, (4, 4)), nn.GroupNorm(2, 4), nn.Flatten(),
    )
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(USER_MODEL)
    return path


def test_vgg11_bn_has_no_bn_exposed() -> None:
    """Its dropouts sit in the classifier, after the last BN. Built on the meta device: the
    structure needs no 500 MB of weights."""
    from bnorder.shift.subjects import load_model

    with torch.device("meta"):
        found = audit(load_model("torchvision:vgg11_bn"))
    assert found.method == "torch.fx" and len(found.layers) == 8 and not found.exposed
    assert found.noise_after_last_bn == ["classifier.2", "classifier.5"]
    assert found.summary() == (
        "0 of 8 BN layers are fed by noise; noise after the last BN: classifier.2, classifier.5"
    )


def test_efficientnet_stochastic_depth_is_recognised() -> None:
    from bnorder.shift.subjects import load_model

    found = audit(load_model("torchvision:efficientnet_b0"))
    kinds = {feed.kind for layer in found.exposed for feed in layer.fed_by}
    assert kinds == {"stochastic depth"} and len(found.exposed) > 0


def test_a_user_module_through_convs_and_residual_sums(user_file: Path) -> None:
    result = invoke("audit", f"{user_file}:build", "--set", "classes=4", "--format", "json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.output)["layers"]}
    assert [f["name"] for f in layers["bn"]["fed_by"]] == ["drop"]
    assert layers["bn"]["fed_by"][0]["hops"] == 2  # dropout → conv → bn
    assert [f["name"] for f in layers["bn_after_sum"]["fed_by"]] == ["branch.1"]
    table = invoke("audit", f"{user_file}:build")
    assert "2 of 2 BN layers are fed by noise; noise after the last BN: head.1" in table.output


def test_a_model_fx_cannot_trace_falls_back_and_says_so(user_file: Path) -> None:
    result = invoke("audit", f"{user_file}:dynamic", "--input-shape", "3,8,8", "--sample", "8")
    assert result.exit_code == 0, result.output
    assert "execution order (torch.fx could not trace: TraceError)" in result.output
    assert "2 of 2 BN layers are fed by noise" in result.output
    from bnorder.shift.subjects import load_model

    model = load_model(f"{user_file}:dynamic").train()
    found = audit(model, example=torch.randn(2, 3, 8, 8))
    assert found.method.startswith("execution order") and model.training  # left as it was


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_the_shift_of_dropout_before_bn_is_one_over_keep_and_recalibration_ends_it(
    p: float,
) -> None:
    """Zero-mean, unit-variance inputs: in training, inverted dropout makes BN's input
    variance 1/(1−p); in eval it is 1, so the shift is 1/(1−p). Re-estimated with dropout
    off, it is 1."""
    net = nn.Sequential(nn.Dropout(p), nn.BatchNorm1d(64, momentum=None))
    batches = random_batches((64,), 8192, 512)
    net.train()
    with torch.no_grad():
        for batch in batches:
            net(batch)
    found = audit(net, [(b, None) for b in batches], recalibrate=True)  # pairs work too
    (layer,) = found.layers
    assert layer.shift == pytest.approx(1 / (1 - p), rel=0.01)
    assert layer.shift_recalibrated == pytest.approx(1.0, abs=1e-4)
    assert net[1].running_var.mean() == pytest.approx(1 / (1 - p), rel=0.01)  # left as it was
    assert variance_shift(net, batches)[0]["shift"] == pytest.approx(layer.shift)
    assert recalibrate_bn(net, batches) is net
    assert variance_shift(net, batches)[0]["shift"] == pytest.approx(1.0, abs=1e-4)


def test_bad_model_weights_and_inputs_are_one_line(tmp_path: Path, user_file: Path) -> None:
    cases = [
        (["torchvision:no_such_net"], "no such model in torchvision"),
        ([f"{tmp_path / 'none.py'}:build"], "none.py: no such file"),
        ([f"{user_file}:nothing"], "has no callable 'nothing'"),
        (["resnet18"], "resnet18: no such file or folder (a run's folder, a config or"),
        ([str(tmp_path / "no-run")], "no-run: no such file or folder"),
        ([f"{user_file}:build", "--set", "depth=3"], "cannot build the model (TypeError"),
        ([f"{user_file}:build", "--input-shape", "3,x"], "--input-shape '3,x'"),
        ([f"{user_file}:build", "--input-shape", "5,8,8"], "cannot run on the inputs given"),
    ]
    other = nn.Linear(2, 2)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    cases.append(([f"{user_file}:build", "--weights", tmp_path / "other.pt"], "missing key"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases.append(([f"{user_file}:build", "--weights", tmp_path / "junk.pt"], "not a weights file"))
    for args, expected in cases:
        result = invoke("audit", *args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1


def test_weights_of_the_model_are_loaded(tmp_path: Path, user_file: Path) -> None:
    from bnorder.shift.subjects import load_model

    model = load_model(f"{user_file}:build")
    nn.init.constant_(model.bn.running_var, 4.0)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    args = ["--input-shape", "3,8,8", "--sample", "16", "--format", "json"]
    result = invoke("audit", f"{user_file}:build", "--weights", tmp_path / "checkpoint.pt", *args)
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.output)["layers"]}
    assert layers["bn"]["shift"] > 1.5  # the loaded running variance, not a fresh 1


def test_a_bnorder_config_and_its_scheme_on_cifar_data(tmp_path: Path, pickle_root: Path) -> None:
    """A bnorder config's own network, measured on CIFAR-10 data (any layout bnorder reads),
    with test accuracy before and after re-calibration; timm without timm is one line."""
    from conftest import tiny_config

    from bnorder.runs.config import load_config
    from bnorder.runs.network import config_network

    config = tiny_config(tmp_path, pickle_root, schemes={"drop_bn": ["dropout", "bn", "act"]})
    weights = tmp_path / "weights.pt"
    network = config_network(load_config(config), "drop_bn")[0].build()
    torch.save(network.state_dict(), weights)
    untrained = invoke("audit", config, "--scheme", "drop_bn", "--data", pickle_root)
    assert untrained.exit_code == 0 and "only its structure is shown" in untrained.output
    assert "test accuracy" not in untrained.output
    result = invoke(
        "audit",
        config,
        "--scheme",
        "drop_bn",
        "--weights",
        weights,
        "--data",
        pickle_root,
        "--sample",
        "20",
        "--recalibrate",
    )
    assert result.exit_code == 0, result.output
    assert "features.stage1.0.bn" in result.output and "test accuracy" in result.output
    assert "after re-calibrating BN" in result.output
    bad = invoke("audit", config, "--scheme", "nope")
    assert bad.exit_code == 2 and "--scheme nope: not a scheme of the config" in bad.output
    try:
        import timm  # noqa: F401
    except ImportError:
        missing = invoke("audit", "timm:resnet18")
        assert missing.exit_code == 2 and "pip install 'bnorder[timm]'" in missing.output


def test_a_class_folder_tree_of_any_image_size(tmp_path: Path, user_file: Path) -> None:
    """Photos of another size in class folders, resized for the model (here 8×8)."""
    from PIL import Image

    from bnorder.shift.subjects import load_model

    for label in ("cat", "dog"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(3):
            photo = Image.new("RGB", (80, 60), (40 * i, 90, 30))
            photo.save(tmp_path / "photos" / label / f"{i}.jpg")
    weights = tmp_path / "weights.pt"
    torch.save(load_model(f"{user_file}:build").state_dict(), weights)
    args = ["--weights", weights, "--data", tmp_path / "photos", "--image-size", "8"]
    result = invoke("audit", f"{user_file}:build", *args, "--sample", "4")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"measured on 4 images of {tmp_path / 'photos'} at 8×8" in said
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    empty = invoke(
        "audit", "torchvision:resnet18", "--data", tmp_path / "empty", "--image-size", "8"
    )
    assert empty.exit_code == 2 and "not a class-folder tree" in empty.output


def test_timm_drop_path_and_bn_act_layers() -> None:
    """timm's DropPath is recognised by name and its BatchNormAct2d kept whole as a BN layer
    (fx would trace into both): efficientnet_b0 as timm builds it matches torchvision's."""
    pytest.importorskip("timm")
    from bnorder.shift.subjects import load_model

    found = audit(load_model("timm:efficientnet_b0", {"drop_path_rate": 0.2, "drop_rate": 0.2}))
    assert len(found.layers) == 49 and len(found.exposed) == 9
    assert {layer.kind for layer in found.layers} == {"BatchNormAct2d"}
    assert {feed.kind for layer in found.exposed for feed in layer.fed_by} == {"drop path"}
    assert found.noise_after_last_bn == ["dropout"]  # the head's F.dropout


def test_functional_dropout_through_concatenations() -> None:
    """DenseNet with drop_rate: F.dropout in each dense layer reaches every later layer's BN
    through the block's concatenation, named by the module that calls it."""
    from bnorder.shift.subjects import load_model

    found = audit(load_model("torchvision:densenet121", {"drop_rate": 0.2}))
    assert len(found.layers) == 121 and len(found.exposed) == 58  # 54 dense, 3 transition, 1
    third = next(layer for layer in found.layers if layer.name.endswith("denselayer3.norm1"))
    assert [(f.name, f.kind, f.rate) for f in third.fed_by] == [
        ("features.denseblock1.denselayer1.dropout", "F.dropout", 0.2),
        ("features.denseblock1.denselayer2.dropout_1", "F.dropout", 0.2),
    ]


def documentation() -> str:
    """The README and the manual in docs/ (the audit's page, docs/variance-shift.md, among it)."""
    root = Path(__file__).resolve().parents[1]
    return "\n".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])


def test_the_public_api_is_declared_and_resolves() -> None:
    """What docs/variance-shift.md documents, ``from bnorder import …``, is ``__all__``, each name a
    function of the shift package (imported on first use, so ``import bnorder`` stays light)."""
    import bnorder

    namespace: dict[str, object] = {}
    exec("from bnorder import *", namespace)
    assert set(bnorder.__all__) == {"__version__", "audit", "recalibrate_bn", "variance_shift"}
    assert {name for name in namespace if not name.startswith("__")} == {
        "audit",
        "recalibrate_bn",
        "variance_shift",
    }
    assert all(callable(namespace[name]) for name in ("audit", "recalibrate_bn", "variance_shift"))
    assert set(bnorder.__all__) <= set(dir(bnorder))
    assert "from bnorder import audit, recalibrate_bn, variance_shift" in documentation()


def test_a_model_without_bn_says_so_and_names_its_norms(tmp_path: Path, user_file: Path) -> None:
    """A ViT or an MLP has no BN to shift: one line in every format, naming the norm layers it
    has, measured or not."""
    from bnorder.shift.subjects import load_model

    weights = tmp_path / "weights.pt"
    torch.save(load_model(f"{user_file}:no_bn").state_dict(), weights)
    expected = "no BN layer, so no variance shift (norm layers: LayerNorm ×2, GroupNorm ×1)"
    measured = ["--weights", weights, "--input-shape", "3,8,8", "--sample", "8"]
    for args in ([], measured, [*measured, "--recalibrate"], ["--format", "markdown"]):
        result = invoke("audit", f"{user_file}:no_bn", *args)
        assert result.exit_code == 0, (args, result.output)
        assert expected in result.output, result.output
    found = json.loads(invoke("audit", f"{user_file}:no_bn", "--format", "json").output)
    assert found["summary"] == expected and found["norm_layers"] == {"LayerNorm": 2, "GroupNorm": 1}


def test_sizes_past_the_limits_are_refused_before_anything_is_allocated(user_file: Path) -> None:
    """--sample and --input-shape are bounded (shift/subjects.py): refused in one line at
    once, never allocated until the process is killed, nor a C++ traceback."""
    from bnorder.shift.subjects import INPUT_LIMIT, RANDOM_LIMIT, SAMPLE_LIMIT

    cases = [
        (["--input-shape", "3,8,8", "--sample", "100000000"], f"at most {SAMPLE_LIMIT:,}"),
        (["--input-shape", "3,20000,20000"], f"at most {INPUT_LIMIT:,} values"),
        (["--input-shape", "99999999999999999999"], "--input-shape 99999999999999999999:"),
        (["--input-shape", "3,2048,2048", "--sample", "5000", "--weights", "w.pt"], "--sample"),
    ]
    for args, expected in cases:
        result = invoke("audit", f"{user_file}:build", *args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1
    run = invoke("audit", user_file.parent, "--sample", str(SAMPLE_LIMIT + 1))  # a run's folder
    assert run.exit_code == 2 and f"at most {SAMPLE_LIMIT:,}" in run.output
    documented = " ".join(documentation().split())
    limits = (SAMPLE_LIMIT, INPUT_LIMIT, RANDOM_LIMIT)
    assert all(f"{limit:,}" in documented for limit in limits), "the docs' limits are the code's"


def test_structure_only_builds_one_example_batch(
    user_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without weights the samples are not measured: only the example fx's fallback may need
    is built, however large --sample is."""
    from bnorder.shift import subjects

    built: list[int] = []
    real = subjects.random_batches
    monkeypatch.setattr(
        subjects, "random_batches", lambda shape, n: built.append(n) or real(shape, n)
    )
    result = invoke("audit", f"{user_file}:dynamic", "--input-shape", "3,8,8", "--sample", "4000")
    assert result.exit_code == 0 and "only its structure is shown" in result.output
    assert built == [2]


ENDING = {
    "exits.py": "import sys\nsys.exit(0)\n",
    "raises.py": "def build():\n    raise SystemExit(3)\n",
    "forward.py": """
from torch import nn


class Checked(nn.Sequential):
    def __init__(self, error):
        super().__init__(nn.Flatten(), nn.Linear(192, 4), nn.BatchNorm1d(4))
        self.error = error

    def forward(self, x):
        if x.shape[-1] != 32:
            raise self.error("expected 32x32 images")
        return super().forward(x)


def asserts():
    return Checked(AssertionError)


def values():
    return Checked(ValueError)


def exits():
    return Checked(SystemExit)
""",
}


def test_user_code_that_ends_the_process_or_raises_is_one_line(tmp_path: Path) -> None:
    """A model file or factory calling sys.exit, or a forward pass raising anything, is the
    user's code failing: one line and exit 2, never exit 0 (or 3) with nothing said, nor a
    traceback."""
    for name, code in ENDING.items():
        (tmp_path / name).write_text(code)
    shape = ["--input-shape", "3,8,8"]
    cases = [
        ([f"{tmp_path / 'exits.py'}:build"], "SystemExit: 0"),
        ([f"{tmp_path / 'raises.py'}:build"], "SystemExit: 3"),
        ([f"{tmp_path / 'forward.py'}:asserts", *shape], "AssertionError: expected 32x32"),
        ([f"{tmp_path / 'forward.py'}:values", *shape], "ValueError: expected 32x32 images"),
        ([f"{tmp_path / 'forward.py'}:exits", *shape], "SystemExit: expected 32x32 images"),
    ]
    for args, expected in cases:
        result = invoke("audit", *args)
        assert result.exit_code == 2, (args, result.exit_code, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1


def test_what_is_not_a_module_or_does_not_trace_says_what_to_give(user_file: Path) -> None:
    from bnorder.shift.audit import ModelError
    from bnorder.shift.subjects import load_model

    with pytest.raises(ModelError, match="^audit: a str, not a torch.nn.Module$"):
        audit("not a model")
    with pytest.raises(ModelError, match=r"example=.*--input-shape or --data"):
        audit(load_model(f"{user_file}:dynamic"))
    said = invoke("audit", f"{user_file}:dynamic")
    assert said.exit_code == 2 and "--input-shape or --data" in said.output


def test_missing_data_names_the_option_audit_takes(tmp_path: Path, user_file: Path) -> None:
    result = invoke("audit", f"{user_file}:build", "--data", tmp_path / "nonexistent")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"--data {tmp_path / 'nonexistent'}: no CIFAR-10 there" in result.output
    assert "data.download" not in result.output and "data.root" not in result.output


def test_accuracy_of_a_model_with_other_classes_is_not_given(
    tmp_path: Path, user_file: Path, pickle_root: Path
) -> None:
    """A 4-class model measured on CIFAR-10: its predictions are not of these classes, so no
    accuracy is printed (0.00% would look like one); its shifts are still measured."""
    from bnorder.shift.subjects import load_model

    weights = tmp_path / "weights.pt"
    torch.save(load_model(f"{user_file}:pooled", {"classes": 4}).state_dict(), weights)
    args = ["--set", "classes=4", "--weights", weights, "--data", pickle_root, "--sample", "20"]
    result = invoke("audit", f"{user_file}:pooled", *args, "--recalibrate")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "no test accuracy: the model has 4 outputs and the data 10 classes" in said
    assert "test accuracy 0" not in said and "recalibrated" in said


def test_huge_shifts_are_compact_and_several_sources_stay_in_line() -> None:
    from rich.console import Console

    from bnorder.cli import render
    from bnorder.shift.audit import Audit, BNLayer, Feed

    feeds = [Feed("first", "Dropout", 0.5, 2), Feed("second.drop", "Dropout2d", 0.1, 3)]
    layer = BNLayer("bn", "BatchNorm2d", feeds, shift=2213807152999493533696.0)
    layer.shift_recalibrated = 1.0
    result = Audit([layer, BNLayer("bn2", "BatchNorm2d")], [], "torch.fx")
    console = Console(width=120, record=True)
    console.print(render.audit_table(result))
    lines = console.export_text().splitlines()
    assert any("first (Dropout)" in line and "0.5" in line and "2.2e+21" in line for line in lines)
    assert any(
        "second.drop (Dropout2d)" in line and "0.1" in line and "3" in line for line in lines
    )
    advice = "\n".join(render.audit_lines(result))
    assert "advice: noise shifts 1 BN layer past 1.1 × no shift" in advice  # no clean one measured
    assert "largest 2.2e+21 at bn" in advice
    assert "first (Dropout), second.drop (Dropout2d)" in render.audit_markdown(result)


def test_the_recalibrated_weights_are_saved_for_the_same_model(
    tmp_path: Path, user_file: Path
) -> None:
    """--recalibrate --save FILE keeps the repair the audit measured: a state_dict that,
    loaded into a fresh model, gives the re-calibrated shifts; written whole or not at all."""
    from bnorder.shift.subjects import load_model

    model = load_model(f"{user_file}:build")
    nn.init.constant_(model.bn.running_var, 4.0)
    weights, saved = tmp_path / "weights.pt", tmp_path / "out" / "recalibrated.pt"
    torch.save(model.state_dict(), weights)
    args = [f"{user_file}:build", "--weights", weights, "--input-shape", "3,8,8", "--sample", "64"]
    result = invoke("audit", *args, "--recalibrate", "--save", saved, "--format", "json")
    assert result.exit_code == 0, result.output
    found = {layer["name"]: layer for layer in json.loads(result.output)["layers"]}
    fresh = load_model(f"{user_file}:build")
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    for row in variance_shift(fresh, random_batches((3, 8, 8), 64)):
        assert row["shift"] == pytest.approx(found[row["name"]]["shift_recalibrated"], rel=1e-5)
    assert found["bn"]["shift"] > 1.5 and sorted(p.name for p in saved.parent.iterdir()) == [
        "recalibrated.pt"
    ]
    refused = [
        ([*args, "--save", tmp_path / "a.pt"], "--save: only with --recalibrate"),
        ([f"{user_file}:build", "--recalibrate", "--save", tmp_path / "a.pt"], "nothing was re-"),
        ([tmp_path, "--recalibrate", "--save", tmp_path / "a.pt"], "--save: not with a run's"),
    ]
    for given, expected in refused:
        said = invoke("audit", *given)
        assert said.exit_code == 2 and expected in said.output, said.output
        assert len(said.output.strip().splitlines()) == 1 and not (tmp_path / "a.pt").exists()


def test_a_model_file_imports_its_sibling_modules(tmp_path: Path) -> None:
    """``FILE.py:factory`` runs as ``python FILE.py`` would: its folder is on the import path
    while it is imported (and only then), so that ``import blocks`` beside it works."""
    import sys

    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "parts.py").write_text(
        "from torch import nn\n\n"
        "def stem():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))\n"
    )
    (tmp_path / "blocks" / "net.py").write_text(
        "from parts import stem\n\ndef build():\n    return stem()\n"
    )
    from bnorder.shift.subjects import load_model

    model = load_model(f"{tmp_path / 'blocks' / 'net.py'}:build")
    assert isinstance(model[1], nn.BatchNorm2d)
    assert str(tmp_path / "blocks") not in sys.path
    sys.modules.pop("parts", None)


@pytest.mark.parametrize("hostile", ["bomb", "fifo"])
def test_an_image_folder_is_read_by_the_reader_runs_use(
    tmp_path: Path, user_file: Path, hostile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decompression bomb is one line naming it, not a traceback; a FIFO named x.png is
    refused, not waited on (as ``bnorder run`` refuses them)."""
    import os

    from PIL import Image

    for label, size in (("cat", (8, 8)), ("dog", (80, 60))):
        (tmp_path / "photos" / label).mkdir(parents=True)
        Image.new("RGB", size, (90, 90, 30)).save(tmp_path / "photos" / label / "0.png")
    if hostile == "bomb":  # past twice PIL's pixel limit: refused from its header
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        said = "photos/dog/0.png: cannot decode image (Image size (4800 pixels) exceeds limit"
    else:
        os.mkfifo(tmp_path / "photos" / "dog" / "x.png")
        said = "photos/dog/x.png: not a regular file (a image must be one)"
    weights = tmp_path / "weights.pt"
    from bnorder.shift.subjects import load_model

    torch.save(load_model(f"{user_file}:build").state_dict(), weights)
    args = ["--weights", weights, "--data", tmp_path / "photos", "--image-size", "8"]
    result = invoke("audit", f"{user_file}:build", *args, "--sample", "4")
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
