"""One-shot GPU check (issues 16 and 24): throughput, then the decisive study, time-boxed.

On a CUDA machine, within a wall-time budget (9 minutes by default, the install included), it
times the throughput benchmark, trains as much of the question's study as fits, compares and
reports, and writes every figure under one folder.

    bash benchmarks/gpu_check.sh [--question long|cifar] [--data PATH] [--out DIR]
                                 [--budget SECONDS] [--dry-run]

``--question long`` (the default) asks issue 24's decisive question on the GPU:
configs/reference-long-gpu.yaml, bn_only against bn_relu_drop and drop_head at dropout 0.1
and 0.3, 3 seeds, full CIFAR-10 (50,000/10,000 images), a VGG 64-128-256, up to 30 epochs,
with its control and decision rule declared in the config before any run. Expected speed on
one H100: about 30,000 training images/s for that VGG with bf16 autocast and channels_last (an
estimate from its 0.9 GFLOP per training image at about a quarter of the chip's bf16 peak, not
yet measured). The cut it makes: all 15 runs at full data always, the epochs cut to what fits:
at that speed the default budget leaves (b) about 400 s, which is 6 to 8 epochs (1,200 to
1,600 SGD steps of 256 images) per run; the full 30 epochs need about --budget 1900.
``--question cifar`` is issue 16's check of configs/cifar.yaml.

Steps, each a child process with its own time box (``--dry-run`` prints them):
  setup         where ``bnorder`` is not importable: ``pip install -e . --no-deps`` into this
                Python, then only the missing dependencies (from ``--wheels DIR`` offline)
  (a) throughput  benchmarks/throughput.py on the question's config with the real data, for
                the default VGG with the trainer's own options (bf16 autocast and
                channels_last on CUDA); for cifar also ``resnet``, and the VGG with
                ``train.compile=true``
  (b) run       long: every run of the study in one sweep, its epochs cut to what (a)'s VGG
                figure says fits. cifar: seed 0 of every scheme, its epochs cut from 15 only
                where they would not fit; then as many further seeds as seed 0's time says
                fit. A step still running at its deadline gets SIGTERM (bnorder marks its run
                interrupted), then SIGKILL
  (c) compare   ``bnorder compare`` on the runs, and ``bnorder report``
It writes OUT/gpu_check.txt and OUT/gpu_check.json (device, torch, git revision, every step's
command and wall time, the throughput figures, each run's training speed and accuracy), the
benchmark's CSV, the runs, and a log per step under OUT/logs; where $OUT is set (a device
machine's copy-back folder) it also puts the summaries and a tarball of the folder there.
Without CUDA it exits 2 with one line, as it does when the data is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/cifar.yaml"
PYTHON = sys.executable
GRACE = 10.0  # seconds between SIGTERM and SIGKILL: bnorder marks its run interrupted meanwhile
RESERVE = 50.0  # seconds kept at the end for compare, report, the summary and the tarball
FALLBACK_IMAGES_PER_SECOND = 10_000.0  # the epoch estimate where (a) gave no VGG figure
# import name → pip name of every dependency in pyproject.toml
REQUIREMENTS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "typer": "typer",
    "rich": "rich",
    "yaml": "pyyaml",
    "pandas": "pandas",
    "pydantic": "pydantic",
    "PIL": "pillow",
    "numpy": "numpy",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "jinja2": "jinja2",  # bnorder report's templates
}
# (a): step name, extra arguments, share of the budget it may take at most
THROUGHPUT = [
    ("throughput-vgg", []),
    ("throughput-resnet", ["--set", "model.arch=resnet"]),
    ("throughput-vgg-compile", ["--set", "train.compile=true"]),
]
THROUGHPUT_SHARE = 0.2  # each (a) step
PHASE_A_SHARE = 0.5  # (a) ends by then, so that (b) keeps at least the rest less RESERVE


@dataclass(frozen=True)
class Question:
    """What (b) trains: a config, the folder under OUT its runs go to, the throughput steps
    (a) takes before it, and whether every seed trains in one sweep (a verdict needs them)."""

    config: str
    folder: str
    throughput: list[tuple[str, list[str]]]
    every_seed: bool


QUESTIONS = {
    # issue 24's decisive question on full data and a long schedule: only the VGG throughput
    # first (the figure that sizes the epochs), so that the study keeps the time
    "long": Question("configs/reference-long-gpu.yaml", "long-training", THROUGHPUT[:1], True),
    "cifar": Question(CONFIG, "cifar", THROUGHPUT, False),  # issue 16's check
}


def refuse(message: str) -> NoReturn:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------- arguments and plan


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    data = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    add("--data", type=Path, default=data, help="CIFAR-10 archive (default ../shared/data/…)")
    out = REPO / "results" / "reference" / "gpu"
    add("--out", type=Path, default=out, help="output folder (default results/reference/gpu)")
    add("--budget", type=float, default=540.0, help="wall seconds in all (default 540)")
    add("--dry-run", action="store_true", help="print the steps and their time boxes; run none")
    add("--wheels", type=Path, help="a folder of wheels for missing dependencies (offline)")
    add("--images", type=int, default=25_600, help="throughput: training images per epoch")
    add("--steps", type=int, default=200, help="throughput: steps per timing of the floor")
    add("--set", action="append", default=[], help="KEY=VALUE for every step (rehearsals)")
    add("--allow-cpu", action="store_true", help="rehearse on CPU (its figures mean nothing)")
    add("--question", choices=sorted(QUESTIONS), default="long", help="what (b) trains")
    return parser


@dataclass
class Step:
    name: str
    command: list[str]
    budget: str  # the time box, as the plan says it


def overrides(args: argparse.Namespace) -> list[str]:
    """The --set arguments every step gets: the data, then the caller's."""
    pairs = [f"data.root={args.data}", *args.set]
    return [part for pair in pairs for part in ("--set", pair)]


def throughput_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    script = str(REPO / "benchmarks" / "throughput.py")
    sizes = ["--images", str(args.images), "--steps", str(args.steps)]
    out = ["--out", str(args.out / "throughput.csv")]
    config = QUESTIONS[args.question].config
    return [PYTHON, script, config, *overrides(args), *extra, *sizes, *out]


def runs_folder(args: argparse.Namespace) -> Path:
    return args.out / QUESTIONS[args.question].folder


def run_command(args: argparse.Namespace, epochs: int | str, seeds: str | None) -> list[str]:
    """``bnorder run`` of the question's config; ``seeds`` None: all of them."""
    # no checkpoints kept: the folder must stay small enough to copy back and commit
    sets = ["--set", f"train.epochs={epochs}", "--set", "train.keep_checkpoints=none"]
    where = [*(["--seeds", seeds] if seeds else []), "--out", str(runs_folder(args))]
    config = QUESTIONS[args.question].config
    return [PYTHON, "-m", "bnorder", "run", config, *overrides(args), *sets, *where]


def bnorder_command(verb: str, args: argparse.Namespace) -> list[str]:
    return [PYTHON, "-m", "bnorder", verb, str(runs_folder(args))]


def plan(args: argparse.Namespace) -> list[Step]:
    """Every step the check may take, for --dry-run; (b)'s epochs and seeds are chosen then."""
    share = f"≤ {THROUGHPUT_SHARE * args.budget:.0f} s, all of (a) by {PHASE_A_SHARE:.0%}"
    setup = [PYTHON, "-m", "pip", "install", "-e", ".", "--no-deps", "--no-build-isolation"]
    question = QUESTIONS[args.question]
    steps = [Step("setup", setup, "only where bnorder is not importable; then missing deps")]
    throughput = question.throughput
    steps += [Step(name, throughput_command(args, extra), share) for name, extra in throughput]
    rest = f"until {args.budget - RESERVE:.0f} s; E from (a)'s VGG figure, at most the config's"
    if question.every_seed:
        steps.append(Step("run-study", run_command(args, "E", None), rest + "; every run"))
    else:
        steps.append(Step("run-seed0", run_command(args, "E", "0"), rest))
        more = run_command(args, "E", "1,…,k")
        steps.append(Step("run-more-seeds", more, "k from seed 0's time"))
    steps.append(Step("compare", bnorder_command("compare", args), "in the reserve"))
    report = "where `bnorder report --help` works"
    steps.append(Step("report", bnorder_command("report", args), report))
    return steps


def print_plan(args: argparse.Namespace) -> None:
    print(f"gpu_check plan: budget {args.budget:.0f} s, data {args.data}, out {args.out}")
    for number, step in enumerate(plan(args), start=1):
        print(f"{number}. {step.name} ({step.budget})\n   {' '.join(step.command)}")
    print("then: gpu_check.txt and gpu_check.json in the out folder, copied to $OUT where set")


# ---------------------------------------------------------------- checks before any work


def check_data(path: Path) -> None:
    if not path.is_file():
        refuse(f"no CIFAR-10 archive at {path} (pass --data PATH)")


def device_name(allow_cpu: bool) -> str:
    """The CUDA device's name; one line and exit 2 where there is none (or torch is missing)."""
    try:
        import torch
    except ImportError as err:
        refuse(f"torch cannot be imported ({err}); run it where torch and CUDA are installed")
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if allow_cpu:
        return f"cpu ({platform.processor() or platform.machine()}, a rehearsal)"
    refuse(
        "no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine, "
        "or see --dry-run"
    )


def prepare_out(out: Path) -> None:
    """A fresh output folder: an earlier check's is replaced, anything else is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / "gpu_check.json").is_file():
            refuse(f"{out} holds files that no GPU check wrote; pass another --out")
        shutil.rmtree(out)  # an earlier check's: its runs would clash with this one's epochs
    (out / "logs").mkdir(parents=True)


# ---------------------------------------------------------------- running a step


@dataclass
class Outcome:
    name: str
    command: list[str]
    seconds: float
    returncode: int | None  # None: not started (no time left)
    timed_out: bool = False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group (its workers too), SIGKILL after GRACE."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def execute(command: list[str], seconds: float, log: Path, env: dict) -> tuple[int, bool]:
    """The exit code, and whether the time box ran out; output goes to ``log``."""
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so that stop() reaches its children
        )
        try:
            return process.wait(timeout=max(seconds - GRACE, 1.0)), False
        except subprocess.TimeoutExpired:
            stop(process)
            return process.returncode, True
        except BaseException:  # Ctrl-C or SIGTERM to this script: leave no child behind
            stop(process)
            raise


@dataclass
class Check:
    """What the phases share: the arguments, the clock, the children's environment, results."""

    args: argparse.Namespace
    device: str
    started: float = field(default_factory=time.monotonic)
    env: dict = field(default_factory=lambda: {**os.environ, "PYTHONUNBUFFERED": "1"})
    outcomes: list[Outcome] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    epochs: int | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left_until(self, at: float) -> float:
        return at - self.elapsed()

    def run(self, name: str, command: list[str], seconds: float) -> Outcome:
        """One step in its time box; a box too small to start in skips it, noted."""
        if seconds < 2 * GRACE:
            self.notes.append(f"{name}: skipped, {max(seconds, 0):.0f} s left")
            print(f"[{self.elapsed():5.0f} s] {name}: skipped, no time left", flush=True)
            return self._record(Outcome(name, command, 0.0, None))
        print(f"[{self.elapsed():5.0f} s] {name} (≤ {seconds:.0f} s)", flush=True)
        began = time.monotonic()
        log = self.args.out / "logs" / f"{name}.log"
        code, timed_out = execute(command, seconds, log, self.env)
        outcome = Outcome(name, command, round(time.monotonic() - began, 1), code, timed_out)
        how = "ran out of time" if timed_out else f"exit {code}"
        print(f"[{self.elapsed():5.0f} s] {name}: {how} after {outcome.seconds:.0f} s", flush=True)
        return self._record(outcome)

    def _record(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome


# ---------------------------------------------------------------- setup


def findable_in_child(check: Check, module: str) -> bool:
    """Whether a fresh process of this Python finds ``module`` (a new editable install's path
    hook works only in processes started after it)."""
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([PYTHON, "-c", probe], cwd=REPO, env=check.env).returncode == 0


def missing_requirements() -> list[str]:
    importlib.invalidate_caches()  # pip may have just added some
    found = importlib.util.find_spec
    return [name for module, name in REQUIREMENTS.items() if found(module) is None]


def setup(check: Check) -> None:
    """bnorder and its dependencies importable by this Python; pip only for what is missing,
    never for torch where it is there (a GPU machine's own build must stay)."""
    if not findable_in_child(check, "bnorder"):
        install = [PYTHON, "-m", "pip", "install", "-q", "-e", ".", "--no-deps"]
        # --no-build-isolation: setuptools as installed, no index needed (offline machines)
        check.run("setup-bnorder", [*install, "--no-build-isolation"], 120)
    if not findable_in_child(check, "bnorder"):
        # the install was refused (a read-only environment, say): the source tree does as well
        paths = [str(REPO / "src"), check.env.get("PYTHONPATH", "")]
        check.env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        check.notes.append("bnorder not installed; its steps ran with PYTHONPATH=src")
    missing = missing_requirements()
    if missing:
        index = ["--no-index", "--find-links", str(check.args.wheels)] if check.args.wheels else []
        check.run("setup-deps", [PYTHON, "-m", "pip", "install", "-q", *index, *missing], 180)
        if still := missing_requirements():
            refuse(f"cannot install {', '.join(still)} (offline? pass --wheels DIR)")
    sys.path.insert(0, str(REPO / "src"))  # for load_config, whichever way bnorder came


# ---------------------------------------------------------------- (a) throughput


def last_row(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows[-1] if rows else None


def describe_throughput(name: str, row: dict[str, str]) -> str:
    def ips(key: str) -> str:
        return f"{float(row[f'{key}_images_per_second']):,.0f}"

    return (
        f"{name}: {row['arch']} {row['widths']}, {row['precision']}, channels_last="
        f"{row['channels_last']}, compile={row['compile']}: trainer {ips('trainer')} images/s, "
        f"textbook {ips('textbook')} ({ips('textbook_same')} with the trainer's options), "
        f"floor {ips('floor_eager')} eager fp32 / {ips('floor_same')} with the options; "
        f"trainer/textbook {row['trainer_over_textbook']}, trainer/floor "
        f"{row['trainer_over_floor_same']}; first step {row['first_step_seconds']} s"
    )


def phase_throughput(check: Check) -> None:
    budget = check.args.budget
    for name, extra in QUESTIONS[check.args.question].throughput:
        seconds = min(THROUGHPUT_SHARE * budget, check.left_until(PHASE_A_SHARE * budget))
        outcome = check.run(name, throughput_command(check.args, extra), seconds)
        row = last_row(check.args.out / "throughput.csv") if outcome.returncode == 0 else None
        if row is not None:
            check.throughput.append({"step": name, **row})
            print(describe_throughput(name, row), flush=True)


# ---------------------------------------------------------------- (b) the sweep


# what an epoch costs beyond training (the test set, the diagnostics sample), and a `bnorder
# run` process's start and data load and each run's set-up, estimated for choosing the epochs
EPOCH_FACTOR = 1.4
STARTUP = 20.0
RUN_OVERHEAD = 3.0


def sweep_config(check: Check) -> Any:
    from bnorder.runs.config import load_config

    return load_config(REPO / QUESTIONS[check.args.question].config, overrides(check.args)[1::2])


def epoch_seconds(check: Check, config: Any) -> float:
    """An epoch of the config's training set at (a)'s VGG speed, evaluation included."""
    vgg = next((row for row in check.throughput if row["step"] == "throughput-vgg"), None)
    speed = float(vgg["trainer_images_per_second"]) if vgg else FALLBACK_IMAGES_PER_SECOND
    return EPOCH_FACTOR * (config.data.train_subset or 50_000) / speed


def choose_epochs(check: Check, config: Any, seconds: float, runs: int | None = None) -> int:
    """The config's epochs where ``runs`` runs (default: every scheme's seed 0) fit in
    ``seconds`` at (a)'s VGG speed, else as many as fit (at least 1): the cut is in epochs,
    never in data, schemes or seeds."""
    runs = runs or len(config.schemes)
    per_run = (seconds - STARTUP) / runs - RUN_OVERHEAD
    return max(1, min(config.train.epochs, math.floor(per_run / epoch_seconds(check, config))))


def study_runs(config: Any) -> int:
    """The runs a sweep of ``config`` trains (a run grid points share counted once)."""
    import torch

    from bnorder.runs.plan import make_plan

    found = lambda root, dataset: ("archive", Path(root))  # noqa: E731 (the data is checked)
    return len(make_plan(config, torch.device("cuda"), locate=found).runs)


def phase_study(check: Check) -> None:
    """Every run of the study in one sweep, at as many epochs as fit (each run's BN
    re-calibration counted as one epoch more)."""
    end = check.args.budget - RESERVE
    config = sweep_config(check)
    runs = study_runs(config)
    fit = choose_epochs(check, config, check.left_until(end), runs)
    epochs = check.epochs = max(1, fit - 1 if config.train.recalibrate_bn else fit)
    if epochs < config.train.epochs:
        check.notes.append(f"the study ran {epochs} epochs of {config.train.epochs}: no time")
    check.run("run-study", run_command(check.args, epochs, None), check.left_until(end))


def phase_runs(check: Check) -> None:
    """Seed 0 of every scheme, then as many more seeds as its time says fit; the long
    question: every run at once."""
    if QUESTIONS[check.args.question].every_seed:
        phase_study(check)
        return
    end = check.args.budget - RESERVE
    config = sweep_config(check)
    epochs = check.epochs = choose_epochs(check, config, check.left_until(end))
    if epochs < config.train.epochs:
        check.notes.append(f"the sweep ran {epochs} epochs of {config.train.epochs}: no time")
    seed0 = run_command(check.args, epochs, str(config.seeds[0]))
    first = check.run("run-seed0", seed0, check.left_until(end))
    if first.returncode != 0 or len(config.seeds) < 2:
        return
    fit = math.floor(check.left_until(end) / (1.1 * first.seconds))
    more = config.seeds[1 : 1 + fit]
    if not more:
        check.notes.append(f"no second seed: seed 0 took {first.seconds:.0f} s")
        return
    seeds = ",".join(map(str, more))
    check.run("run-more-seeds", run_command(check.args, epochs, seeds), check.left_until(end))


# ---------------------------------------------------------------- (c) compare and report


def phase_compare(check: Check) -> None:
    args = check.args
    if not any(runs_folder(args).rglob("run.json")):
        check.notes.append("no runs to compare")
        return
    box = min(90.0, check.left_until(args.budget) - 10)
    compared = check.run("compare", bnorder_command("compare", args), box)
    if compared.returncode is not None:
        shutil.copyfile(args.out / "logs" / "compare.log", args.out / "compare.txt")
    probe = [*bnorder_command("report", args)[:-1], "--help"]
    helped = subprocess.run(probe, cwd=REPO, env=check.env, capture_output=True, timeout=60)
    if helped.returncode != 0:
        check.notes.append("`bnorder report` is not there yet: no report")
        return
    box = min(90.0, check.left_until(args.budget) - 10)
    check.run("report", bnorder_command("report", args), box)


# ---------------------------------------------------------------- summary


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def run_figures(folder: Path) -> list[dict[str, Any]]:
    """Each run's status, epochs, last test accuracy and training speed from its own files
    (the first epoch left out of the speed: it warms up)."""
    figures = []
    for info_path in sorted(folder.rglob("run.json")):
        info = json.loads(info_path.read_text())
        metrics_path = info_path.with_name("metrics.csv")
        rows = list(csv.DictReader(metrics_path.open())) if metrics_path.is_file() else []
        timed = rows[1:] or rows
        figures.append(
            {
                "run": info.get("name"),
                "status": info.get("status"),
                "epochs": len(rows),
                "test_acc": float(rows[-1]["test_acc"]) if rows else None,
                "images_per_second": mean([float(r["images_per_second"]) for r in timed]),
                "epoch_seconds": mean([float(r["epoch_seconds"]) for r in timed]),
            }
        )
    return figures


def git_revision() -> str:
    """The commit where this is a git checkout, else $BNORDER_GIT_REVISION (a copied tree)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:  # no git on the machine
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout.strip()
    return os.environ.get("BNORDER_GIT_REVISION", "unknown (no git checkout)")


def summary(check: Check) -> dict[str, Any]:
    import torch

    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "device": check.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "budget_seconds": check.args.budget,
        "wall_seconds": round(check.elapsed(), 1),
        "data": str(check.args.data),
        "sweep_epochs": check.epochs,
        "steps": [asdict(outcome) for outcome in check.outcomes],
        "throughput": check.throughput,
        "question": QUESTIONS[check.args.question].config,
        "runs": run_figures(runs_folder(check.args)),
        "notes": check.notes,
    }


def summary_text(facts: dict[str, Any], out: Path) -> str:
    lines = [
        f"GPU check {facts['when']}: {facts['device']}, torch {facts['torch']} (CUDA "
        f"{facts['cuda']}), Python {facts['python']}, {facts['cpus']} CPUs, revision "
        f"{facts['git_revision']}; {facts['wall_seconds']:.0f} s of {facts['budget_seconds']:.0f}",
        "",
        "steps (wall seconds, exit code):",
    ]
    for step in facts["steps"]:
        how = "ran out of time" if step["timed_out"] else f"exit {step['returncode']}"
        lines.append(f"  {step['name']:<24} {step['seconds']:>7.1f} s  {how}")
    lines += ["", "(a) throughput, training images/s:"]
    lines += [f"  {describe_throughput(row['step'], row)}" for row in facts["throughput"]]
    lines += ["", f"(b) {facts['question']}, {facts['sweep_epochs']} epochs per run:"]
    for run in facts["runs"]:
        lines.append(
            f"  {run['run']:<28} {run['status']:<11} {run['epochs']:>3} epochs  test acc "
            f"{run['test_acc']}  {run['images_per_second']} images/s  "
            f"{run['epoch_seconds']} s/epoch"
        )
    lines += [f"note: {note}" for note in facts["notes"]]
    compared = out / "compare.txt"
    if compared.is_file():
        lines += ["", "(c) bnorder compare:", compared.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def copy_back(out: Path) -> None:
    """Into $OUT where set: the summaries, the benchmark's CSV and a tarball of the folder
    (a copy-back folder takes a few files, not a tree of runs)."""
    target = os.environ.get("OUT")
    if not target or Path(target).resolve() == out:
        return
    for name in ("gpu_check.txt", "gpu_check.json", "throughput.csv"):
        if (out / name).is_file():
            shutil.copyfile(out / name, Path(target) / name)
    with tarfile.open(Path(target) / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=lambda m: None if m.name.endswith(".pt") else m)


def finish(check: Check) -> None:
    facts = summary(check)
    out = check.args.out
    (out / "gpu_check.json").write_text(json.dumps(facts, indent=2) + "\n")
    text = summary_text(facts, out)
    (out / "gpu_check.txt").write_text(text)
    copy_back(out)
    print(f"\n{text}\nwritten to {out}" + (" and $OUT" if os.environ.get("OUT") else ""))


# ---------------------------------------------------------------- main


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: stop the step, still write the summary


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    args = make_parser().parse_args(argv)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    args.wheels = args.wheels.resolve() if args.wheels else None
    check_data(args.data)
    if args.dry_run:
        print_plan(args)
        return
    check = Check(args, device_name(args.allow_cpu), started)
    prepare_out(args.out)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        setup(check)
        phase_throughput(check)
        phase_runs(check)
        phase_compare(check)
    except KeyboardInterrupt:
        check.notes.append("interrupted")
    finally:
        finish(check)
    # a refused editable install is covered by PYTHONPATH=src (noted), so it fails nothing
    failed = [
        o.name
        for o in check.outcomes
        if o.returncode not in (0, None) and not o.timed_out and o.name != "setup-bnorder"
    ]
    if failed:
        raise SystemExit(f"gpu_check: failed steps: {', '.join(failed)} (see {args.out}/logs)")


if __name__ == "__main__":
    main()
