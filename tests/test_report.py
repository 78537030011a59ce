"""bnorder report: one self-contained file on a results folder, checked as a reader gets it,
in headless Chromium (Debian's chromium package) driven over the DevTools protocol on a pipe,
with the standard library only. Without Chromium the browser test is skipped, except under
CI=true, where it fails: CI installs it (.ci/run)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import invoke
from markupsafe import escape

from bnorder.analysis.compare import compare

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# what the runs found leads; how they were made follows
SECTIONS = ["verdicts", "question", "summary", "curves", "variance-shift", "grid", "left-out"]


# ---------------------------------------------------------------- results folders


def _grid_point(out: Path, name: str, grid: dict, diagnostics: bool) -> None:
    """The v0 fixture's runs as the grid point ``out/name`` of values ``grid``; without
    ``diagnostics``, their variance shift and BN re-calibration removed (columns and files)."""
    point = shutil.copytree(FIXTURES / "v0-results", out / name)
    (point / "config.yaml").unlink()
    for run_file in point.glob("*/seed*/run.json"):
        info = json.loads(run_file.read_text())
        info.update(grid=grid, experiment_hash=f"grid-{name}")
        run_file.write_text(json.dumps(info))
        (run_file.parent / "checkpoint.pt").unlink(missing_ok=True)
        if diagnostics:
            continue
        (run_file.parent / "variance_shift.csv").unlink()
        metrics = run_file.with_name("metrics.csv")
        lines = metrics.read_text().splitlines()
        keep = [i for i, name in enumerate(lines[0].split(",")) if "vshift" not in name]
        keep = [i for i in keep if "recalibrated" not in lines[0].split(",")[i]]
        rows = [",".join(line.split(",")[i] for i in keep) for line in lines]
        metrics.write_text("\n".join(rows) + "\n")


def _grid_config(out: Path, grid: dict, recalibrate: bool) -> None:
    config = yaml.safe_load((FIXTURES / "v0-results" / "config.yaml").read_text())
    config["grid"] = grid
    config["train"]["recalibrate_bn"] = recalibrate
    config["output"] = str(out)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _grid_results(tmp_path: Path) -> Path:
    """A grid over model.dropout (0.1, 0.5) made of the v0 fixture's runs, without variance
    shift or BN re-calibration (columns and files removed), with one run failed and one
    diverged beside the fixture's interrupted one."""
    out = tmp_path / "grid"
    for value in (0.1, 0.5):
        _grid_point(out, f"dropout={value}", {"model.dropout": value}, diagnostics=False)
    _set_status(out / "dropout=0.5" / "bn_only" / "seed1", "failed", "RuntimeError: <boom> | x")
    _set_status(out / "dropout=0.1" / "bn_only" / "seed0", "diverged", "non-finite loss")
    _grid_config(out, {"model.dropout": [0.1, 0.5]}, recalibrate=False)
    return out


def _wide_grid(tmp_path: Path) -> Path:
    """The widest report the tables should still fit a desktop page in: a grid of 6 points
    over 2 keys, every diagnostic measured (both accuracies, the shift) and a run left out
    at each point, so that every optional column of every table is shown."""
    out = tmp_path / "wide"
    grid = {"model.dropout": [0.1, 0.2, 0.5], "train.lr": [0.05, 0.1]}
    for dropout in grid["model.dropout"]:
        for lr in grid["train.lr"]:
            values = {"model.dropout": dropout, "train.lr": lr}
            _grid_point(out, f"dropout={dropout},lr={lr}", values, diagnostics=True)
    _grid_config(out, grid, recalibrate=True)
    return out


def _set_status(run: Path, status: str, error: str) -> None:
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": status, "error": error}))


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    """The v0 fixture (shift, re-calibration, an interrupted run) and its report, built once."""
    from bnorder.analysis.report import build_report

    out = Path(shutil.copytree(FIXTURES / "v0-results", tmp_path_factory.mktemp("v0") / "v0"))
    return out, build_report(out)


# ---------------------------------------------------------------- the report's content


def test_html_report_is_self_contained_and_in_order(sweep) -> None:
    from bnorder.analysis.report import ReportFormat, save_report

    out, report = sweep
    before = _snapshot(out)
    [path] = save_report(report, out / "report.html", ReportFormat.html)
    html = path.read_text()
    assert _snapshot(out) == {**before, path: path.read_bytes()}  # nothing else written
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "url(" not in html and "@import" not in html and "<link" not in html
    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", html)
    assert len(sources) == len(report.figures) == 8
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    positions = [html.index(f'<section id="{name}">') for name in [*SECTIONS, "provenance"]]
    assert positions == sorted(positions)
    # compare's verdicts, word for word, grouped by accuracy; confirmatory against the
    # declared baseline
    comparison = compare(out, write=False)
    for verdict in comparison.pairs["verdict"]:
        assert f"<li>{escape(verdict)}</li>" in html
    assert re.search(r"<summary><strong>As trained</strong>: 1 degenerate</summary>", html)
    assert "Confirmatory" in html and "(bn_relu_drop)" in html
    _assert_leads_with_the_answer(html, comparison, markdown=False)
    assert re.search(r'<td class="text outcome o-degenerate">degenerate</td>', html)
    assert "bn_relu_drop/seed2" in html and "interrupted" in html
    assert "CONV → BN → ACT → DROPOUT" in html
    assert "No grid was swept" in html and "was not measured" not in html
    assert f"bnorder run {out}/config.yaml --out {out}" in html  # it names another output
    assert "ec4c4b64b43360efb26b7141c66dcb784500ee05" in html and "2.14.1+cu130" in html
    assert "learns CIFAR-10? These runs trained a VGG-style CNN under" in " ".join(html.split())
    assert '<details class="items"' not in html and "<body>" in html  # one revision; no grid


def _assert_leads_with_the_answer(text: str, comparison, markdown: bool) -> None:
    """The report's top, in order: which accuracy answers which question (naming the images
    BN was re-estimated from), the regime and family lines, the forest plot, the verdict
    table, the verdict sentences, and only then the question's details."""
    from bnorder.analysis.view import family_texts, recalibrated_words, regime_texts

    flat = " ".join(text.split())
    reading = [
        "Two accuracies answer two questions. Test accuracy as trained",
        "what the network gives if deployed as it was trained: the practitioner's number",
        f"with {recalibrated_words(comparison.runs)}. It tells where a cost lies",
        "lay in BN's running statistics, fixable after training by re-estimating them; what "
        "remains lies in the placement itself",
    ]
    lines = [*regime_texts(comparison), *family_texts(comparison)]
    forest = "forest.png)" if markdown else '<img src="data:image/png;base64,'
    table = "| scheme | accuracy |" if markdown else '<table class="verdict-table">'
    sentence = f"- {comparison.pairs['verdict'].iloc[0]}" if markdown else 'id="verdict-sentences"'
    question = "## The question" if markdown else '<section id="question">'
    escaped = [line if markdown else str(escape(line)) for line in [*reading, *lines]]
    marks = [*escaped, forest, table, sentence, question]
    positions = [flat.find(" ".join(mark.split())) for mark in marks]
    assert -1 not in positions, [m for m, at in zip(marks, positions, strict=True) if at < 0]
    assert positions == sorted(positions)


def test_markdown_report_has_its_figures_beside_it(sweep, tmp_path: Path) -> None:
    from bnorder.analysis.report import ReportFormat, save_report

    out, report = sweep
    written = save_report(report, tmp_path / "supplement.md", ReportFormat.markdown)
    text = written[0].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(p.name for p in written[1:])
    assert all(p.parent == tmp_path and p.read_bytes()[:4] == b"\x89PNG" for p in written[1:])
    assert "supplement-vshift_by_layer.png" in links and "supplement-forest.png" in links
    assert "| scheme | runs | not done | test |" in text
    comparison = compare(out, write=False)
    for verdict in comparison.pairs["verdict"]:
        assert f"\n- {verdict}\n" in text
    assert "**As trained**: 1 degenerate" in text
    assert "| bn_only | trained | degenerate |\n|  | re-est. | degenerate |" in text
    _assert_leads_with_the_answer(text, comparison, markdown=True)


def test_cli_report_of_a_grid_with_failures_without_recalibration(tmp_path: Path) -> None:
    out = _grid_results(tmp_path)
    before = _snapshot(out)
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {out / 'report.html'}"
    html = (out / "report.html").read_text()
    assert _snapshot(out) == {**before, out / "report.html": html.encode()}
    assert "Final test accuracy by scheme and grid point" in html  # the heat map
    assert "model.dropout" in html and "dropout=0.5" in html
    assert '<body class="grid">' in html  # its figures are panels: each the page's width
    assert "The variance shift was not measured in these runs." in html
    assert "BN re-calibration was not measured in these runs" in html
    # one accuracy, so the lead says what it answers and what these runs cannot tell
    flat = " ".join(html.split())
    assert "These runs did not re-estimate BN after training (train.recalibrate_bn off)" in flat
    matrix = html[html.index('<table class="verdict-table">') :]
    matrix = matrix[: matrix.index("</table>")]
    heads = re.findall(r'<th scope="col" class="text">([^<]*)</th>', matrix)
    assert heads == ["scheme", "accuracy", "dropout=0.1", "dropout=0.5"]
    assert matrix.count("<tr") == 2 and "re-est." not in matrix  # bn_only, as trained only
    for run, status in (
        ("dropout=0.5/bn_only/seed1", "failed"),
        ("dropout=0.1/bn_only/seed0", "diverged"),
    ):
        assert re.search(f"<td>{run}</td><td[^>]*>{status}</td>", html)
    assert "RuntimeError: &lt;boom&gt; | x" in html  # the user's text, escaped
    assert f"bnorder run {out}/config.yaml</code>" in html  # its config names this folder


def _vary_runs(out: Path) -> list[str]:
    """bn_only's runs on an image-folder data set with a DenseNet-BC, the rest on CIFAR-10 with
    the VGG-style net; every run of its own git revision, every other one dirty. Returns the
    revisions."""
    revisions = []
    for i, run_file in enumerate(sorted(out.glob("*/seed*/run.json"))):
        info = json.loads(run_file.read_text())
        if info["scheme"] == "bn_only":
            info["config"]["data"].update(dataset="folder", root="data/pets")
            info["config"]["model"]["arch"] = "densenet"
        info["git_revision"] = f"{i:040x}" + ("-dirty" if i % 2 else "")
        revisions.append(info["git_revision"])
        run_file.write_text(json.dumps(info))
    return revisions


def test_question_names_data_and_networks_and_revisions_fold(
    sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnorder.analysis import report as module

    out = Path(shutil.copytree(FIXTURES / "v0-results", tmp_path / "v0"))
    revisions = _vary_runs(out)
    monkeypatch.setattr(module, "_figures", lambda _: sweep[1].figures)  # drawn once, above
    report = module.build_report(out)
    html, markdown = module.render_html(report), module.render_markdown(report)
    question = (  # not "CIFAR-10" whatever the runs learned; each network named
        "how well a CNN learns the image-folder data set at data/pets and CIFAR-10? "
        "These runs trained a DenseNet-BC and a VGG-style CNN under 2 orderings"
    )
    for text in (html, markdown):
        assert question in " ".join(text.split())
        assert ", ".join(revisions[:2]) not in text  # counted and listed, not joined in a line
    folded = "5 different revisions, 2 with uncommitted changes (-dirty)"
    assert re.search(f"<details[^>]*><summary>{re.escape(folded)}</summary><ul>", html)
    listed = re.findall(r"<li><code>([0-9a-f]{40}(?:-dirty)?)</code> \(1 run\)</li>", html)
    assert sorted(listed) == sorted(revisions)
    assert f"| git revision | {folded}, listed below |" in markdown
    assert f"<summary>git revision: {folded}</summary>" in markdown
    assert all(f"- `{revision}` (1 run)" in markdown for revision in revisions)
    assert "| torch | 2.14.1+cu130 |" in markdown  # a field of one value stays inline


def test_cli_report_refuses_bad_input_and_touches_nothing(tmp_path: Path) -> None:
    out = Path(shutil.copytree(FIXTURES / "v0-results", tmp_path / "v0"))
    before = _snapshot(out)
    cases = {
        (tmp_path / "missing",): f"{tmp_path / 'missing'}: no such folder",
        (tmp_path / "v0" / "bn_only" / "seed0" / "nothing-here",): "no such folder",
        (out, "-o", out / "summary.csv"): "a html report is written to a .html or .htm file",
        (out, "-o", out / "run.json", "--format", "markdown"): "written to a .md file",
        (out, "-o", out / "config.yaml" / "report.html"): f"{out / 'config.yaml'}",
        (out, "-o", out / "bn_only.html"): None,  # fine: a new file
    }
    (out / "bn_only.html").mkdir()  # ... until it is a folder
    cases[(out, "-o", out / "bn_only.html")] = "a folder; name the report's file"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases[(empty,)] = f"{empty}: no completed runs found"
    for args, message in cases.items():
        result = invoke("report", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    assert _snapshot(out) == before and not list(empty.iterdir())


# ---------------------------------------------------------------- in a real browser


class Chromium:
    """Headless Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe:
    commands on its fd 3, replies on its fd 4, each a JSON message ended by NUL)."""

    def __init__(self, binary: str, profile: Path) -> None:
        ours_read, theirs_write = os.pipe()
        theirs_read, self.ours_write = os.pipe()

        def as_fd_3_and_4() -> None:  # copies first: the pipe ends may be 3 or 4 themselves
            read, write = os.dup(theirs_read), os.dup(theirs_write)
            os.dup2(read, 3)
            os.dup2(write, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe"]
        quiet = ["--no-first-run", "--disable-background-networking", "--disable-extensions"]
        self.process = subprocess.Popen(
            [binary, *flags, *quiet, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=as_fd_3_and_4,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(theirs_read)
        os.close(theirs_write)
        self.ours_read, self.pending, self.last_id, self.events = ours_read, b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ours_read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.ours_read, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self.pending += chunk
        message, self.pending = self.pending.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        command = {"id": self.last_id, "method": method, "params": params}
        if session is not None:  # a page's command; the browser's own have none
            command["sessionId"] = session
        os.write(self.ours_write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + 30
        while (message := self._message(deadline)).get("id") != self.last_id:
            self.events.append(message)
        assert "error" not in message, message
        return message["result"]

    def wait_for(self, event: str, since: int = 0) -> None:
        """Until ``event`` has come, among the events from index ``since`` on."""
        deadline = time.monotonic() + 30
        while not any(e.get("method") == event for e in self.events[since:]):
            self.events.append(self._message(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, EOFError, TimeoutError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self.ours_read)
            os.close(self.ours_write)


PROBE = """(() => {
  // against the screen's width: a phone widens its layout viewport to what overflows
  const closed = document.documentElement.scrollWidth - screen.width;
  // every table measured, those folded away in <details> too
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const table = document.querySelector('table.verdict-table');
  const sentences = document.getElementById('verdict-sentences');
  return JSON.stringify({
    images: document.images.length,
    loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
    first_image: document.images.length ? document.images[0].alt : null,
    text: document.body.innerText.length,
    client: document.documentElement.clientWidth,
    overflow: Math.max(closed, document.documentElement.scrollWidth - screen.width),
    tables: [...document.querySelectorAll('table')].map(t => ({
      head: t.rows[0].innerText.slice(0, 40),
      width: t.scrollWidth,
      box: t.parentElement.clientWidth,
    })),
    table_first: !!(table && sentences &&
      table.compareDocumentPosition(sentences) & Node.DOCUMENT_POSITION_FOLLOWING),
    resources: performance.getEntriesByType('resource').map(e => e.name)
      .filter(name => !name.startsWith('data:')),
  });
})()"""
# the screen's size too: the probe measures the page against screen.width
PHONE = {"width": 412, "height": 900, "screenWidth": 412, "screenHeight": 900}
PHONE |= {"deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1100, "height": 900, "screenWidth": 1100, "screenHeight": 900}
DESKTOP |= {"deviceScaleFactor": 1, "mobile": False}


def _open(browser: Chromium, page: Path, screen: dict) -> tuple[dict, bytes, list[str]]:
    """Load ``page`` on a ``screen`` (PHONE, DESKTOP): what the probe finds in it (with every
    <details> opened), a screenshot of the whole page as loaded, and the URL of every request
    it made."""
    seen = len(browser.events)
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Network.enable", "Page.enable"):
        browser.send(domain, session)
    browser.send("Emulation.setDeviceMetricsOverride", session, **screen)
    browser.send("Page.navigate", session, url=page.as_uri())
    browser.wait_for("Page.loadEventFired", since=seen)
    shot = browser.send("Page.captureScreenshot", session, captureBeyondViewport=True)
    probe = browser.send("Runtime.evaluate", session, expression=PROBE, returnByValue=True)
    requests = [
        e["params"]["request"]["url"]
        for e in browser.events[seen:]
        if e.get("method") == "Network.requestWillBeSent"
    ]
    browser.send("Target.closeTarget", targetId=target)
    return json.loads(probe["result"]["value"]), base64.b64decode(shot["data"]), requests


def _chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        message = "headless Chromium (Debian's chromium package) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; .ci/run installs it")
        pytest.skip(message)
    return binary


def test_report_in_headless_chromium(sweep, tmp_path: Path) -> None:
    """On a phone and at a desktop's 1100 pixels: the page loads nothing from outside, never
    scrolls sideways, leads with the forest plot and puts the verdict table before the
    sentences; at 1100 pixels every table shows all its columns without scrolling. Checked on
    the v0 fixture and on the widest grid a report has (every optional column shown)."""
    from PIL import Image

    from bnorder.analysis.report import TITLES, ReportFormat, build_report, save_report

    binary = _chromium()
    pages = [save_report(sweep[1], tmp_path / "report.html", ReportFormat.html)[0]]
    wide = build_report(_wide_grid(tmp_path))
    pages += save_report(wide, tmp_path / "wide.html", ReportFormat.html)
    browser = Chromium(binary, tmp_path / "profile")
    try:
        found = {
            (p.stem, w["width"]): _open(browser, p, w) for p in pages for w in (PHONE, DESKTOP)
        }
    finally:
        browser.close()
    for (name, width), (probe, png, requests) in found.items():
        where = (name, width)
        (tmp_path / f"{name}-{width}.png").write_bytes(png)  # kept with the test's files
        report = sweep[1] if name == "report" else wide
        assert probe["images"] == len(report.figures) == probe["loaded"], where
        assert probe["first_image"] == TITLES["forest.png"], where  # the lead figure
        assert probe["table_first"], where  # the verdict table, then the sentences
        assert probe["text"] > 2000 and probe["overflow"] <= 0, where  # never sideways
        assert probe["resources"] == [], where
        assert [url for url in requests if not url.startswith("data:")] == [
            (tmp_path / f"{name}.html").as_uri()
        ], where
        image = Image.open(io.BytesIO(png)).convert("RGB")
        # the whole page, as wide as the screen but for a desktop's scroll bar
        assert image.width == probe["client"] > width - 20 and image.height > 3000, where
        assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50, where
        if width == DESKTOP["width"]:  # every column in view, in every table
            assert len(probe["tables"]) >= 5, where
            wider = [t for t in probe["tables"] if t["width"] > t["box"]]
            assert not wider, (where, wider)


def test_markdown_report_shows_the_users_html_as_text(tmp_path: Path) -> None:
    """Markdown passes HTML through: text from run files (a failed run's error here) is
    written so that a viewer shows it, never runs it or makes it a link."""
    out = _grid_results(tmp_path)
    failed = out / "dropout=0.5" / "bn_only" / "seed1" / "run.json"
    info = json.loads(failed.read_text())
    info["error"] = "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:y)"
    failed.write_text(json.dumps(info))
    assert invoke("report", out, "--format", "markdown").exit_code == 0
    markdown = (out / "report.md").read_text()
    assert "<script>" not in markdown and "<img" not in markdown and "](javascript" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "![" in markdown and "<details>" in markdown  # the report's own markup stays
