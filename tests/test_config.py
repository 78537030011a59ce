from pathlib import Path

import pytest
from conftest import invoke

from bnorder.runs.config import (
    ConfigError,
    ExperimentConfig,
    apply_override,
    build_config,
    load_config,
    parse_yaml,
    select_schemes,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["cifar.yaml", "smoke.yaml", "cifar-cpu.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(CONFIGS / name)
    ops = {name: spec.ops for name, spec in config.schemes.items()}
    assert ops["bn_relu_drop"] == ["bn", "act", "dropout"]
    assert ops["relu_drop_bn"] == ["act", "dropout", "bn"]
    assert ops["bn_only"] == ["bn", "act"]


def test_schemes_by_catalogue_name_list_or_mapping() -> None:
    config = build_config(
        {"schemes": {"mine": ["act", "bn"], "drop_head": "drop_head", "x": {"ops": ["bn"]}}}
    )
    assert config.schemes["drop_head"].ops == ["bn", "act"]
    assert config.schemes["drop_head"].head == ["dropout"]
    assert config.schemes["x"].head == []
    listed = build_config({"schemes": ["plain", "drop_bn_relu"]})
    assert list(listed.schemes) == ["plain", "drop_bn_relu"]
    assert listed.schemes["drop_bn_relu"].ops == ["dropout", "bn", "act"]


def test_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.2\nseeds: [3]\n")
    config = load_config(path, ["train.epochs=2", "model.widths=[8, 16]", "data.root=/x/y"])
    assert config.train.epochs == 2  # override beats file
    assert config.train.lr == 0.2  # file beats default
    assert config.train.batch_size == ExperimentConfig().train.batch_size  # default kept
    assert config.model.widths == [8, 16]
    assert config.data.root == "/x/y"
    assert config.seeds == [3]


def test_exponent_floats_parse_as_floats() -> None:
    # YAML 1.1 reads 5e-4 as a string; users write it that way all the time.
    assert parse_yaml("5e-4") == 5e-4
    assert build_config({"train": {"weight_decay": parse_yaml("1E-3")}}).train.weight_decay == 1e-3


def test_integer_accepted_where_float_expected() -> None:
    assert build_config({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epocs": 3}}, "train.epocs: unknown key (did you mean 'epochs'?)"),
        ({"trian": {}}, "trian: unknown key (did you mean 'train'?)"),
        ({"model": {"dropout": 1.0}}, "model.dropout: Input should be less than 1 (got 1.0)"),
        ({"model": {"dropout": -0.1}}, "model.dropout: Input should be greater than or equal"),
        ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer (got 'ten')"),
        ({"train": {"epochs": 2.5}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than 0"),
        ({"train": {"augment": "yes"}}, "train.augment: Input should be a valid boolean"),
        ({"train": {"schedule": "step"}}, "train.schedule: Input should be 'cosine'"),
        ({"schemes": {"x": ["bn", "relu"]}}, "schemes.x.ops: unknown token 'relu'"),
        ({"schemes": {"x": ["bn", "act", "bn"]}}, "schemes.x.ops: token 'bn' appears twice"),
        ({"schemes": {"x": "bn"}}, "schemes.x: unknown scheme 'bn' (catalogue: bn_relu_drop"),
        ({"schemes": {"x": {"ops": ["bn"], "heads": []}}}, "schemes.x.heads: unknown key"),
        ({"schemes": {"x": {"ops": ["bn"], "head": ["x"]}}}, "schemes.x.head: unknown token"),
        ({"schemes": ["plain", "nope"]}, "schemes.nope: unknown scheme 'nope'"),
        ({"schemes": ["plain", "plain"]}, "schemes: scheme 'plain' is listed twice"),
        ({"schemes": {}}, "schemes: Dictionary should have at least 1 item"),
        ({"schemes": {"../up": ["bn"]}}, "schemes.../up: a scheme name must be"),
        ({"schemes": ["plain"], "baseline": "bn_only"}, "baseline: not one of the schemes (plain)"),
        ({"seeds": [1, 1]}, "seeds: seeds must be unique"),
        ({"train": {"lr": float("inf")}}, "train.lr: Input should be a finite number"),
        ({"train": {"lr": 1e308}}, "train.lr: Input should be less than or equal to 1000000"),
        ({"train": {"weight_decay": float("nan")}}, "train.weight_decay: Input should be a finite"),
        ({"train": {"warmup_epochs": 1e308}}, "train.warmup_epochs: Input should be less than or"),
        ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
        ({"seeds": [2**32]}, "seeds.0: Input should be less than 2147483648"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"model": {"widths": [8] * 7}}, "model.widths: List should have at most 6 items"),
        ({"schemes": {"config.yaml": ["bn"]}}, "schemes.config.yaml: 'config.yaml' is reserved"),
        ({"device": "gpu"}, "device: device must be auto, cpu, cuda, cuda:N (N < 1000) or mps"),
        ({"device": "cuda:" + "9" * 20}, "device: device must be auto, cpu, cuda, cuda:N (N <"),
        ({"model": {"widths": [16, 0]}}, "model.widths: every width must be a positive integer"),
        ({"data": 3}, "data: Input should be a valid dictionary"),
    ],
)
def test_bad_values_name_key_path_and_value(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="c.yaml")
    assert str(info.value).startswith(f"c.yaml: {expected}")
    assert "\n" not in str(info.value)


def test_any_order_and_subset_of_tokens_is_a_scheme() -> None:
    config = build_config({"schemes": {"a": ["act"], "b": ["dropout", "bn", "act"], "c": []}})
    assert config.schemes["b"].ops == ["dropout", "bn", "act"]


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: not valid YAML: expected ','"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_duplicate_keys_are_errors_not_silently_the_last() -> None:
    with pytest.raises(ConfigError, match="c.yaml:3:3: not valid YAML: duplicate key 'x'"):
        parse_yaml("schemes:\n  x: [bn]\n  x: [act]\n", source="c.yaml")
    with pytest.raises(ConfigError, match="not valid YAML: found unhashable key"):
        parse_yaml("? [a, b]\n: 1\n")


def test_override_into_an_empty_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n")
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


def test_yaml_is_loaded_safely() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("!!python/object/apply:os.system ['true']")


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "train.epochs")
    with pytest.raises(ConfigError, match="train.epochs is not a section"):
        apply_override({"train": {"epochs": 3}}, "train.epochs.x=1")


def test_select_schemes_keeps_given_order_and_rejects_unknown() -> None:
    config = ExperimentConfig()
    assert list(select_schemes(config, ["bn_only", "bn_relu_drop"]).schemes) == [
        "bn_only",
        "bn_relu_drop",
    ]
    with pytest.raises(ConfigError, match="--schemes: unknown scheme 'nope'"):
        select_schemes(config, ["nope"])
    from_catalogue = select_schemes(config, ["bn_only", "drop_head"])  # not in the config
    assert from_catalogue.schemes["drop_head"].head == ["dropout"]
    with pytest.raises(ConfigError, match="--schemes: no scheme named"):
        select_schemes(config, [])


# ---------------------------------------------------------------- hostile input (issue 17)

ALIAS_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9 levels of 9: 387 million values once expanded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{ALIAS_BOMB}model: {{widths: *i}}\n", "more than 1,000,000 values once aliases"),
        ("seeds: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels deep"),
        ("seeds: [" + "9" * 5000 + "]\n", "not a usable value ('Exceeds the limit"),
        ("seeds: &s [*s]\n", "an alias refers to a value that contains it"),
        ("seeds: [" + ", ".join(["'" + "x" * 50 + "'"] * 5000) + "]\n", "(got 'xxxx"),
    ],
)
def test_hostile_yaml_is_one_bounded_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = invoke("validate", path)
    assert result.exit_code == 2 and expected in result.output
    assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 400


def test_a_duplicate_among_thousands_of_keys_is_found() -> None:
    """The check keeps a set of the keys seen (it searched a list: 100,000 keys took over
    100 s); the last key of thousands repeats the eighth."""
    text = "\n".join(f"k{i}: {i}" for i in range(5_000)) + "\nk7: 0\n"
    with pytest.raises(ConfigError, match="duplicate key 'k7'"):
        parse_yaml(text)


def test_config_files_that_are_not_text_or_not_files(tmp_path: Path) -> None:
    import os
    import threading

    cases = {
        "latin1.yaml": ("seeds: [0]  # caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 17)"),
        "utf16.yaml": ("seeds: [0]\n".encode("utf-16"), "not UTF-8 text (byte 0)"),
        "big.yaml": (b"# " + b"x" * (4 * 2**20) + b"\n", "larger than 4 MiB, the most a config"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        result = invoke("validate", tmp_path / name)
        assert result.exit_code == 2 and expected in result.output, result.output
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    results = []
    reader = threading.Thread(target=lambda: results.append(invoke("validate", fifo)))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert results[0].exit_code == 2 and "fifo.yaml: not a regular file" in results[0].output
