"""The README is a front page and docs/ the manual, built by MkDocs (mkdocs.yml): every page is in
the nav, every relative link and anchor leads somewhere on GitHub and on the site, and what the
pages show a reader to type exists: each ``bnorder COMMAND`` with its options, each config,
benchmark and committed result they name."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# a command as a reader would type it: not ``from bnorder import``, ``bnorder[ray]``, ``bnorder.x``
COMMAND = re.compile(
    r"(?<![\w./-])(?<!from )(?<!import )bnorder((?:(?:[ \t]*\\\n)?[ \t]+[^\s|;&#\"'`)]+)+)"
)
NAMED = re.compile(
    r"(?<![\w./-])((?:configs|benchmarks)/[\w./-]+\.(?:yaml|py|sh)|results/reference/cpu/[\w./=-]+)"
)


def without_code(text: str) -> str:
    """The prose of a page: fenced blocks blanked, so a ``#`` in a shell block is no heading."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def code(text: str) -> list[str]:
    """What a page shows as code: its fenced blocks and its inline spans."""
    return FENCE.findall(text) + INLINE.findall(without_code(text))


def nav_pages(nav: list) -> list[str]:
    found = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def test_mkdocs_builds_docs_strictly_with_every_page_in_its_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    assert config["theme"] == {"name": "mkdocs"} and "plugins" not in config
    nav = nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page twice in the nav"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(nav), f"not in nav: {pages - set(nav)}; no such page: {set(nav) - pages}"


def slugs(text: str) -> set[str]:
    """The anchors of a page's headings that GitHub and MkDocs (Python-Markdown's toc) both
    give, so that a link with one works in both places."""
    both = set()
    for heading in HEADING.findall(without_code(text)):
        plain = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        github = re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")
        ascii_ = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode()
        mkdocs = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_).strip())
        if github == mkdocs:
            both.add(github)
    return both


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_an_anchor(page: Path) -> None:
    for target in LINK.findall(without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        assert not path.startswith("/"), f"{page.name}: {target}: absolute, breaks on GitHub"
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_file(), f"{page.name}: {target}: no such file"
        if page.parent == DOCS:  # the site holds docs/ only: a link out of it breaks there
            assert DOCS in resolved.parents, f"{page.name}: {target}: outside docs/"
        if anchor:
            assert resolved.suffix == ".md", f"{page.name}: {target}: an anchor into a non-page"
            assert anchor in slugs(resolved.read_text()), f"{page.name}: {target}: no such anchor"


def test_the_readme_is_a_front_page_that_leads_into_every_page_of_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is a front page: move it to docs/"
    linked = {t.partition("#")[0] for t in LINK.findall(text) if t.startswith("docs/")}
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")} - {"docs/index.md"}
    assert pages <= linked, f"the README's 'Where to go next' misses {pages - linked}"


@cache
def cli() -> dict[str, set[str]]:
    """Every command of the typer app, with the options it takes."""
    import typer

    from bnorder.cli.app import app

    group = typer.main.get_command(app)
    options = {"": {o for p in group.params for o in p.opts} | {"--help"}}
    for name, command in group.commands.items():
        taken = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        options[name] = taken | {"--help"}
    return options


def shown() -> list[tuple[str, list[str]]]:
    """(page, words) for every ``bnorder …`` a page shows as code."""
    found = []
    for page in PAGES:
        for snippet in code(page.read_text()):
            # a table cell escapes the | of "a | b": an alternative, not a pipe
            for match in COMMAND.finditer(snippet.replace("\\|", " ")):
                words = match.group(1).replace("\\\n", " ").split()
                if words[0] not in ("…", "..."):  # python -m bnorder …
                    found.append((page.name, words))
    return found


def commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, options) for every ``bnorder …`` a page shows as code."""
    found = []
    for page, words in shown():
        name = "" if words[0].startswith("-") else words[0]
        options = [w for w in words if w.lstrip("[").startswith("-")]
        flags = [w.split("=")[0].strip("[]…") for w in options]
        found.append((page, name, flags))
    return found


# the commands that need no data set and write nothing: a page's example of one is run as shown
RUN_AS_SHOWN = {"plan", "schemes", "model"}


def test_the_examples_that_need_no_data_run_as_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``bnorder plan|schemes|model …`` a page shows, whole (its placeholders, such as
    ``[--set KEY=VALUE]…`` in a table, are not commands to run), exits 0 from the checkout."""
    from conftest import invoke

    monkeypatch.chdir(ROOT)

    def example(words: list[str]) -> bool:  # not a name in a sentence, nor a synopsis
        placeholder = any(w.isupper() or any(c in w for c in "[]<>…|") for w in words[1:])
        return (
            words[0] in RUN_AS_SHOWN
            and not placeholder
            and (len(words) > 1 or words == ["schemes"])
        )

    runnable = [(page, words) for page, words in shown() if example(words)]
    assert {words[0] for _, words in runnable} >= {"plan", "schemes"}
    for page, words in runnable:
        result = invoke(*words)
        assert result.exit_code == 0, f"{page}: bnorder {' '.join(words)}\n{result.output}"


def test_every_command_shown_is_one_the_cli_has_with_its_options() -> None:
    shown = commands()
    assert {name for _, name, _ in shown} >= {"run", "compare", "audit", "report", "plan"}
    for page, name, flags in shown:
        assert name in cli(), f"{page}: `bnorder {name}` is no command of bnorder"
        unknown = [f for f in flags if f not in cli()[name]]
        assert not unknown, f"{page}: `bnorder {name}` has no option {unknown}"


def test_every_config_benchmark_and_committed_result_named_exists() -> None:
    named = set()
    for page in PAGES:
        named |= {(page.name, path.rstrip(".")) for path in NAMED.findall(page.read_text())}
    assert {("README.md", "configs/cifar.yaml"), ("README.md", "configs/smoke.yaml")} <= named
    missing = sorted((page, path) for page, path in named if not (ROOT / path).exists())
    assert not missing, f"named but not in the repository: {missing}"


def test_mkdocs_build_strict_passes(tmp_path: Path) -> None:
    """What CI runs (.ci/run), where mkdocs is installed (the ``docs`` extra)."""
    pytest.importorskip("mkdocs")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site")))
    assert (tmp_path / "site" / "index.html").is_file()
