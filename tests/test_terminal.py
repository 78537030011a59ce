"""What a user reads in a terminal of any width: tables that never cut a figure, help that
reads as sentences, and progress that counts only what is done (issue 18)."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import typer
from conftest import interrupt_after, invoke, tiny_config
from rich.console import Console

from bnorder.cli import app as cli
from bnorder.cli import shell
from bnorder.core.tables import FittedTable

REFERENCE = Path(__file__).resolve().parents[1] / "results/reference/cpu/variance-shift-4x3"
BORDERS = "│┃"


@pytest.fixture(autouse=True)
def console_reads_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's console as a process that starts without COLUMNS has it: one that reads
    COLUMNS each time it prints (one made where COLUMNS is set keeps that width)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(shell, "console", Console(soft_wrap=True))


def real_results(folder: Path, grid: dict | None = None) -> Path:
    """Run folders of the real 4 schemes × 3 seeds CPU run under results/reference, from the
    metrics it kept: run.json as far as compare reads it."""
    for path in sorted(REFERENCE.glob("metrics-*-seed*.csv")):
        frame = pd.read_csv(path)
        scheme, seed = str(frame["scheme"][0]), int(frame["seed"][0])
        run = folder / scheme / f"seed{seed}"
        run.mkdir(parents=True)
        frame.to_csv(run / "metrics.csv", index=False)
        info = {
            "scheme": scheme,
            "seed": seed,
            "status": "completed",
            "config_hash": scheme,
            "experiment_hash": "variance-shift",
            "grid": grid or {},
            "config": {"train": {"epochs": len(frame)}},
        }
        (run / "run.json").write_text(json.dumps(info))
    return folder


PERCENT = [
    "final_test_acc_mean",
    "final_train_eval_acc_mean",
    "gap_mean",
    "test_acc_recalibrated_mean",
]


def figures(row: dict) -> list[str]:
    """Every figure of one summary row, as the table prints it: both accuracies with their
    CIs, the fit, the shift and the time."""
    intervals = [
        "–".join(f"{row[f'{metric}_ci_{end}'] * 100:.2f}" for end in ("low", "high"))
        for metric in ("final_test_acc", "test_acc_recalibrated")
    ]
    return [
        *(f"{row[key] * 100:.2f}" for key in PERCENT),
        *intervals,
        f"{row['vshift_max_gmean']:.2f}",
        f"{row['epoch_seconds_mean']:.1f}",
        str(row["runs"]),
    ]


@pytest.mark.parametrize("grid", [None, {"model.dropout": 0.5}], ids=["plain", "grid"])
def test_compare_prints_every_figure_whole_at_any_width(tmp_path: Path, grid: dict | None) -> None:
    results = real_results(tmp_path / "results", grid)
    rows = json.loads(invoke("compare", results, "--format", "json").output)["summary"]
    assert len(rows) == 4
    for width in (60, 80, 200):
        shown = invoke("compare", results, env={"COLUMNS": str(width)})
        assert shown.exit_code == 0, shown.output
        # the summary, then the verdict table, then the notes (soft-wrapped: paths stay whole)
        tables = shown.output[: shown.output.index("\nregime: ")]
        summary, verdicts = tables.split("\nverdicts: each scheme against its baseline")
        title, table = summary.split("\n", 1)
        assert title.startswith(str(results))  # a path stays whole, on one line, as the notes'
        for part in (table, verdicts):
            assert max(len(line) for line in part.splitlines()) <= width  # parts and caption
            assert "…" not in part
        assert re.search(r"\b(worse|better|equivalent|inconclusive|degenerate)\b", verdicts)
        cells = {cell for line in table.splitlines() for cell in re.split(rf"[\s{BORDERS}]+", line)}
        for row in rows:
            assert row["scheme"] in cells
            missing = [figure for figure in figures(row) if figure not in cells]
            assert not missing, f"{row['scheme']}: {missing} cut at {width} columns\n{table}"
        assert (table.count("┏") == 1) is (width == 200)  # one table where it fits, as before


def test_every_table_keeps_its_figures_whole_when_narrow() -> None:
    """diagnose's and audit's tables go through the same layout: the columns past the width
    move under the first part, the naming ones repeated."""
    figures = [f"{1.234567 * 10**k:.4g}" for k in range(8)]
    wide = FittedTable(
        ["layer", "name", *(f"figure {k}" for k in range(8))],
        [[str(i), f"features.stage{i}.0.bn", *figures] for i in range(3)],
        keys=2,
        left=frozenset(["name"]),
        caption="what the figures mean, a caption long enough to need wrapping at fifty columns",
    )
    out = io.StringIO()
    Console(file=out, width=50, soft_wrap=True).print(wide)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 50 and "…" not in text
    cells = {cell for line in text.splitlines() for cell in re.split(rf"[\s{BORDERS}]+", line)}
    assert set(figures) <= cells
    assert text.count("features.stage2.0.bn") == len(wide.parts(50)) > 1


# ---------------------------------------------------------------- help


def premature_breaks(text: str, width: int) -> list[str]:
    """Lines a text broke where the next line's first word would have fit: a line break kept
    from the source rather than one the width made. A continuation line is one whose text
    starts where the last column of the line above starts, with nothing left of it."""
    found = []
    lines = [line.ljust(width) for line in text.splitlines()]
    for upper, lower in itertools.pairwise(lines):
        words = lower.replace("│", " ").split()
        if not words or words[0].startswith("["):  # typer's [default: …] goes on its own line
            continue
        start = len(lower) - len(lower.lstrip(" │"))
        end = upper.find("│", start + 1)
        end = width - 1 if end < 0 else end - 1  # the cell's last column, less its padding
        cell = upper[start:end].rstrip()
        if not cell[:1].strip() or re.search(r"\S\s{2,}\S", cell):
            continue  # the line above has no text of one column there: a new row
        if len(cell) + 1 + len(words[0]) < end - start:
            found.append(f"{upper.rstrip()}\n{lower.rstrip()}")
    return found


def test_the_checker_finds_a_kept_line_break() -> None:
    assert premature_breaks(" Train every scheme and\n write metrics.", 80)
    assert not premature_breaks(" Train every scheme and write metrics.", 80)


COMMANDS = sorted(typer.main.get_command(cli.app).commands)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_as_sentences(command: str | None, width: int) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    shown = invoke(*args, env={"COLUMNS": str(width)})
    assert shown.exit_code == 0, shown.output
    assert not premature_breaks(shown.output, width), "\n\n".join(
        premature_breaks(shown.output, width)
    )
    if command is not None:  # every paragraph of the docstring is there, whole
        doc = typer.main.get_command(cli.app).commands[command].help
        flat = " ".join(shown.output.split())
        for paragraph in doc.split("\n\n"):
            assert " ".join(paragraph.split()) in flat


@pytest.mark.parametrize("width", [60, 200])
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_metavars_say_what_an_option_takes(command: str | None, width: int) -> None:
    """No flag shows a ``<bool>`` it does not take; a choice shows its name, never its values
    cut mid-word; usage names arguments in capitals, as the help texts do."""
    args = ["--help"] if command is None else [command, "--help"]
    shown = invoke(*args, env={"COLUMNS": str(width)}).output
    assert "<bool>" not in shown
    assert not re.search(r"<[a-z]+\|[a-z|]*$", shown, re.MULTILINE)  # <table|markdown|cs…
    usage = next(line for line in shown.splitlines() if "Usage:" in line)
    assert not re.search(r"\{[a-z_]+\}", usage), usage


def test_audit_formats_are_the_ones_it_has() -> None:
    refused = invoke("audit", "torchvision:resnet18", "--format", "csv")
    assert refused.exit_code == 2 and "'csv' is not one of" in " ".join(refused.output.split())


def test_prose_keeps_paragraphs_and_joins_lines() -> None:
    assert shell.prose("One\n    two.\n\n    Three\n    four.") == "One two.\n\nThree four."


# ---------------------------------------------------------------- progress


@pytest.fixture
def config(tmp_path: Path, pickle_root: Path) -> Path:
    return tiny_config(tmp_path, pickle_root)


def sweep_bar(output: str) -> str:
    """The sweep's progress bar as last drawn: 'done/total'."""
    return re.findall(r"^sweep.*?(\d+/\d+)", output, flags=re.M)[-1]


def test_ctrl_c_before_the_first_epoch_counts_nothing_and_keeps_nothing(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        interrupt_after(patch, 0)
        stopped = invoke("run", config)
    assert stopped.exit_code == 130
    assert sweep_bar(stopped.output) == "0/3"
    assert "interrupted before its first epoch: nothing kept, it starts over" in stopped.output
    assert "0 of 3 runs are done" in stopped.output
    assert "is kept" not in stopped.output


def test_ctrl_c_after_runs_completed_counts_only_those(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("run", config, "--schemes", "bn_only").exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        stopped = invoke("run", config)
    assert stopped.exit_code == 130
    assert sweep_bar(stopped.output) == "1/3"  # bn_only, done before; the interrupted one not
    assert "marked interrupted after epoch 1, which is kept" in stopped.output
    assert "1 of 3 runs are done" in stopped.output


def test_the_next_command_quotes_its_path(tmp_path: Path) -> None:
    """The hint is a command to paste: a path with a space or a ; is quoted as a shell reads it."""
    import shlex

    from bnorder.cli.render import report_line
    from bnorder.runs.sweep import SweepReport

    output = tmp_path / "my results; rm -rf x"
    line = report_line(SweepReport(output), 0).splitlines()[-1]
    assert line.startswith("next: ") and shlex.split(line[len("next: ") :]) == [
        "bnorder",
        "compare",
        str(output),
    ]
