"""The commands on an experiment config: ``run`` trains its sweep, ``validate`` checks it and
``plan`` lists its runs. Each takes the config and the shared options (options.py) as its
first parameters, in the same order, and loads the config with ``experiment_config``."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import torch
import typer

from bnorder.cli import live, render, shell
from bnorder.cli.options import (
    ConfigArg,
    DeviceOption,
    DevicesOption,
    ExecutorOption,
    FailFastOption,
    OutOption,
    OverwriteOption,
    RayAddressOption,
    RayCpusOption,
    RayGpusOption,
    SchemesOption,
    SeedsOption,
    SetOption,
    ShardOption,
    WorkersOption,
    experiment_config,
)
from bnorder.cli.shell import errors, say
from bnorder.data.catalog import reporting_decodes
from bnorder.data.sources import locate_data
from bnorder.runs.estimate import SweepClock, workload
from bnorder.runs.plan import ExecutorKind, Shard, SweepOptions, check_writable, make_plan
from bnorder.runs.sweep import Sweep, SweepReport, prepare_sweep
from bnorder.runs.train import resolve_device


def run(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
    overwrite: OverwriteOption = False,
    fail_fast: FailFastOption = False,
    workers: WorkersOption = None,
    devices: DevicesOption = None,
    shard: ShardOption = None,
    executor: ExecutorOption = ExecutorKind.local,
    ray_address: RayAddressOption = None,
    ray_cpus: RayCpusOption = None,
    ray_gpus: RayGpusOption = None,
) -> None:
    """Train every scheme × seed of CONFIG and write metrics under its output folder.

    Rerunning the same command skips completed runs and resumes interrupted ones from their
    last checkpoint. Workers, shards and Ray tasks may share one output folder: their runs
    merge there."""
    resolved = experiment_config(config, set_, schemes, seeds, device, out)
    options = SweepOptions(
        overwrite=overwrite,
        fail_fast=fail_fast,
        shard=_shard(shard),
        workers=workers,
        devices=_devices(devices),
        executor=executor,
        ray_address=ray_address,
        ray_cpus=ray_cpus,
        ray_gpus=ray_gpus,
    )
    with prepare_sweep(resolved, options) as sweep:  # bad input stops here
        if sweep.plan.shard is not None:
            part = f"{len(sweep.plan.runs)} of the sweep's {sweep.plan.total} runs"
            say(f"shard {sweep.plan.shard}: {part}")
        report = _run_with_progress(sweep)
    _ended(report, len(sweep.plan.runs))


def _ended(report: SweepReport, total: int) -> None:
    """How the sweep's ``total`` runs ended, and its exit where runs failed."""
    say(render.report_line(report, total))
    for line in render.failure_lines(report):
        errors.print(line, highlight=False)
    if report.failed:  # refused runs only: bad input, as a conflict found before any run is
        raise typer.Exit(2 if report.refused == len(report.failed) else 1)


def _stop_on_sigterm() -> None:
    """Slurm, Kubernetes and preemptible machines stop jobs with SIGTERM: treat it as Ctrl-C,
    so that the current run is marked interrupted and can be resumed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread: leave the default
        signal.signal(signal.SIGTERM, interrupt)


def _run_with_progress(sweep: Sweep) -> SweepReport:
    """The sweep, shown live: a bar per run, the sweep's with its time left, and one while a
    data set is decoded into the cache. SIGTERM from here on stops it as Ctrl-C does."""
    _stop_on_sigterm()
    clock = SweepClock.of(sweep.plan)
    with live.progress_bars(shell.console) as progress:
        display = live.LiveProgress(
            progress, len(sweep.plan.runs), clock, sweep.executor.device.type
        )
        with reporting_decodes(display.decoding):
            return sweep.run([clock, display])  # the clock first: the display shows its estimate


def _shard(text: str | None) -> Shard | None:
    if text is not None:
        return Shard.parse(text)
    shard = Shard.from_slurm(os.environ)
    if shard is not None:  # said aloud: a job array that runs whole sweeps needs --shard 0/1
        say(
            f"shard {shard} from SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']} "
            "(--shard 0/1 runs the whole sweep)",
            to=errors,
        )
    return shard


def _devices(text: str | None) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.split(",") if d.strip()) if text else ()


def validate(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
) -> None:
    """Check CONFIG and its overrides, the device, the data and the output folder; train
    nothing. Exit code 2, with the offending key or path, where something is wrong."""
    resolved = experiment_config(config, set_, schemes, seeds, device, out)
    plan = make_plan(resolved, resolve_device(resolved.device), SweepOptions())
    check_writable(resolved.output)
    say(
        f"{config}: valid. {render.run_counts(plan.runs)} on {plan.device}, "
        f"{len(plan.done)} already done; data: {plan.data_location}; output: {resolved.output}"
    )
    say(f"to train: {workload(plan).line()}")


def plan(
    config: ConfigArg,
    set_: SetOption = None,
    schemes: SchemesOption = None,
    seeds: SeedsOption = None,
    device: DeviceOption = None,
    out: OutOption = None,
    shard: ShardOption = None,
) -> None:
    """Print the runs CONFIG's sweep (or one shard of it) would train, and which are done
    already; train nothing. Works where the data or the device is not at hand (a login node):
    give --device the type the runs train on where auto would pick another here."""
    resolved = experiment_config(config, set_, schemes, seeds, device, out)
    name = resolved.device
    # the device type makes a run's identity; it need not be present here
    where = resolve_device(name) if name == "auto" else torch.device(name)
    planned = make_plan(
        resolved,
        torch.device(where.type),
        SweepOptions(shard=_shard(shard)),
        locate=lambda root, dataset: locate_data(root, dataset) or ("not found here", Path(root)),
    )
    part = f"shard {planned.shard}: " if planned.shard is not None else ""
    done = sum(run in planned.done for run in planned.runs)
    say(
        f"{part}{len(planned.runs)} of {planned.total} runs on {where.type}, {done} done, "
        f"{len(planned.runs) - done} to do; output: {resolved.output}; "
        f"data: {planned.data_location}"
    )
    say(f"to train: {workload(planned).line()}")
    # one print, not one per run: rich takes a fraction of a millisecond a call
    say("\n".join(f"{'done' if r in planned.done else 'to do':6} {r.name}" for r in planned.runs))
