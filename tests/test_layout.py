"""The package's map: subpackages along the data's path, no import cycle between modules or
between subpackages (lazy and type-checking imports count too), no module over 500 lines,
and no module reaching into another's private names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bnorder"
# the stages, lowest first: a subpackage imports only from those before it
LAYERS = ["core", "nets", "data", "shift", "runs", "analysis", "cli"]
MAX_LINES = 500
LAYOUT_PAGE = PACKAGE.parents[1] / "docs" / "layout.md"  # "How the code is laid out"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[tuple[str, str | None]]:
    """(module, name) for every bnorder import in the file, wherever it sits."""
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names if a.name.startswith("bnorder")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnorder"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add((sub, None) if sub in known else (node.module, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    edges: dict[str, set[str]] = {}
    for name, path in modules().items():
        targets = {module for module, _ in imports(path, known) if module != "bnorder"}
        edges[name] = {t for t in targets if t in known and t != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_every_module_sits_in_a_stage() -> None:
    flat = [m for m in modules() if m.count(".") == 1 and m.split(".")[1] not in LAYERS]
    assert sorted(flat) == ["bnorder.__main__"]


def test_no_import_cycle_between_modules() -> None:
    assert cycle(graph()) is None


def test_subpackages_import_only_the_stages_below() -> None:
    wrong = []
    for source, targets in graph().items():
        here = subpackage(source)
        for target in targets:
            there = subpackage(target)
            if here and there and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{source} → {target}")
    assert wrong == []


def test_no_module_reaches_into_another_private_name() -> None:
    known = set(modules())
    wrong = [
        f"{name} uses {module}.{item}"
        for name, path in modules().items()
        for module, item in imports(path, known)
        if item and item.startswith("_") and item != "__version__"
    ]
    assert wrong == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_fits_in_a_sitting(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_layout_page_names_every_stage_in_order_and_each_module_in_its_stage() -> None:
    """docs/layout.md is the map a newcomer reads: its numbered stages are LAYERS, in order, and
    each stage's item names every module of that subpackage."""
    items = re.split(r"^\d+\. \*\*`(\w+)/`\*\*", LAYOUT_PAGE.read_text(), flags=re.M)
    stages = dict(zip(items[1::2], items[2::2], strict=True))
    assert list(stages) == LAYERS
    for stage, text in stages.items():
        files = {p.name for p in (PACKAGE / stage).glob("*.py")} - {"__init__.py"}
        unnamed = sorted(f for f in files if f"`{f}`" not in text)
        assert not unnamed, f"docs/layout.md: {stage}/ does not name {unnamed}"
