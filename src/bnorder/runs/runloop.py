"""One run, start to end, in this process: the run loop every executor ends in.

``train_job`` loads the job's data, takes the run's lock and makes one ``RunAttempt``, whose
phases read in order: ``start`` (afresh, or from the newest checkpoint of this very config),
``train`` (epochs, each written, measured and checkpointed), ``finish`` (BN re-calibration),
``end`` (the final record). How an exception ends a run is decided in one place, ``_attempt``.
"""

from __future__ import annotations

import contextlib
import errno
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bnorder.data.catalog import ImageData, Split
from bnorder.data.loaders import DeviceLoader, Loader, flips, load_data
from bnorder.data.options import DataConfig
from bnorder.runs.config import ExperimentConfig, TrainConfig
from bnorder.runs.events import EpochDone, Listener, RunEnded, RunStarted, Stepped
from bnorder.runs.folder import RunFolder, run_files
from bnorder.runs.metrics import EpochRow
from bnorder.runs.monitor import ShiftMonitor
from bnorder.runs.network import run_network
from bnorder.runs.plan import (
    RunSpec,
    config_identity,
    experiment_identity,
    fingerprint,
    run_config,
    run_identity,
    stored_run_hash,
)
from bnorder.runs.records import Outcome, RunInfo, Status, provenance, read_info
from bnorder.runs.train import Diverged, Trainer, configure_process


@dataclass(frozen=True)
class Job:
    """One run as an executor gets it: all that a fresh process needs to train it."""

    config: ExperimentConfig  # the run's grid point
    run: RunSpec
    overwrite: bool = False


@dataclass
class ProcessCache:
    """What one process keeps between the runs it trains: each data config's data, loaded
    once (a grid over data keys loads each once), and the output folders it found to hold no
    run on other data: that check reads a folder's records once per process, not once per
    run (a 600-run sweep read 360,000 of them)."""

    data: dict[str, ImageData] = field(default_factory=dict)
    same_data: set[tuple[str, str]] = field(default_factory=set)  # (output, fingerprint)

    def data_of(self, config: ExperimentConfig) -> ImageData:
        key = config.data.model_dump_json()
        if key not in self.data:
            self.data[key] = load_data(config.data)
        return self.data[key]

    def other_data(self, output: str, fingerprint: str) -> str | None:
        """``other_data``, asked once per output folder and fingerprint."""
        if (output, fingerprint) in self.same_data:
            return None
        found = other_data(output, fingerprint)
        if found is None:
            self.same_data.add((output, fingerprint))
        return found


def new_trainer(
    config: ExperimentConfig, run: RunSpec, data: ImageData, device: torch.device
) -> Trainer:
    """The Trainer of ``run`` on ``device``, fed by the loaders the config's pipeline makes."""
    return Trainer(
        network=run_network(config, run.order, data),
        train_config=config.train,
        seed=run.seed,
        device=device,
        loaders=make_loaders(data, config.data, config.train, seed=run.seed, device=device),
    )


def new_monitor(config: ExperimentConfig, data: ImageData, device: torch.device) -> ShiftMonitor:
    """The run's diagnostics, on the images its config names, flipped as training flips."""
    return ShiftMonitor(config.train, data, device, flip=flips(config.data))


def train_job(job: Job, device: torch.device, emit: Listener, cache: ProcessCache) -> Outcome:
    """Train one run in this process, on ``device``, under its lock, emitting its progress
    to ``emit``. Any executor ends here, so that a run's files are alike wherever it trained."""
    data = cache.data_of(job.config)
    folder = RunFolder.of(job.config.output, job.run.scheme, job.run.seed)
    with folder.lock() as mine:
        if not mine:
            return Outcome(Status.BUSY, "another process is training it")
        info = new_info(job, data, device)  # its provenance from before this run's settings
        configure_process(job.config.train, device)
        previous = folder.read_info()
        if previous is not None and stored_run_hash(previous) == info.config_hash:
            if previous.done:  # done meanwhile by another process
                return Outcome(Status.SKIPPED, f"{previous.status} in another process")
        elif previous is not None and not job.overwrite:  # written meanwhile by another config
            detail = "another process wrote a run of a different config here"
            return Outcome(Status.CONFLICT, detail)
        other = cache.other_data(job.config.output, data.fingerprint)
        if other is not None:
            return Outcome(Status.CONFLICT, other)
        return _attempt(RunAttempt(job, data, device, emit, folder, info), previous)


def other_data(output: str | Path, fingerprint: str) -> str | None:
    """Why ``output`` takes no run on data of this fingerprint: a run there trained on other
    data (their numbers are not comparable, and compare would average them); else None.
    Runs of older versions, which recorded no fingerprint, are taken on trust."""
    for run_file in run_files(output):
        try:
            theirs = read_info(run_file).data_fingerprint
        except (OSError, ValueError):
            continue  # unreadable: compare reports it
        if theirs and theirs != fingerprint:
            return (
                f"{run_file.parent} trained on other data (fingerprint {theirs}, this data "
                f"{fingerprint}): use another --out"
            )
    return None


def new_info(job: Job, data: ImageData, device: torch.device) -> RunInfo:
    """The record of a run about to start: what it is, and where and on what it trains."""
    run, resolved = job.run, run_config(job.config, job.run)
    return RunInfo(
        name=run.name,
        scheme=run.scheme,
        ops=list(run.order.ops),
        head=list(run.order.head),
        seed=run.seed,
        status=Status.RUNNING,
        config_hash=fingerprint(run_identity(resolved, device.type)),
        experiment_hash=fingerprint(experiment_identity(config_identity(resolved, device.type))),
        started_at=datetime.now(timezone.utc).isoformat(),
        **provenance(device).model_dump(),
        data_source=data.source,
        data_fingerprint=data.fingerprint,
        train_images=len(data.train),
        test_images=len(data.test),
        grid=run.grid_values,
        config=resolved,
    )


def _attempt(attempt: RunAttempt, previous: RunInfo | None) -> Outcome:
    """Run the attempt's phases; the one place where an exception becomes a status. A
    failed run is recorded and the sweep goes on; Ctrl-C is recorded, then raised."""
    try:
        attempt.start(previous)
        attempt.train()
        attempt.finish()
    except Diverged as err:
        return attempt.end(Status.DIVERGED, str(err))
    except KeyboardInterrupt:
        attempt.end(Status.INTERRUPTED, f"stopped after epoch {len(attempt.rows)}")
        raise
    except Exception as err:  # one broken run must not end the sweep
        detail = f"{err.__class__.__name__}: {err}"
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            detail = f"no space left on device writing {err.filename}"
        return attempt.end(Status.FAILED, detail, trace=traceback.format_exc())
    return attempt.end(Status.COMPLETED)


class RunAttempt:
    """One attempt at one run, under its lock, and what it has done so far."""

    def __init__(
        self,
        job: Job,
        data: ImageData,
        device: torch.device,
        emit: Listener,
        folder: RunFolder,
        info: RunInfo,
    ) -> None:
        self.data, self.device, self.emit = data, device, emit
        self.config, self.run, self.folder, self.info = job.config, job.run, folder, info
        self.labels: dict[str, Any] = {"scheme": job.run.scheme, "seed": job.run.seed}
        self.labels.update(job.run.grid_values)  # metrics.csv columns: a grid run's values
        self.rows: list[EpochRow] = []
        self.started, self.earlier_seconds = time.perf_counter(), 0.0
        self.trainer: Trainer | None = None
        self.monitor: ShiftMonitor | None = None

    def start(self, previous: RunInfo | None) -> None:
        """From the newest checkpoint of this config, where one is usable; else afresh, with
        the folder cleared of whatever an earlier attempt or another config left."""
        self.folder.remove_partials()
        self._resume()
        trainer = self.trainer
        if trainer.epoch == 0:
            self.rows = []
            self.folder.clear()
        elif previous is not None:
            self.earlier_seconds = previous.wall_seconds or 0.0
        self.info.resumed_from_epoch = trainer.epoch or None
        self.info.epochs_completed = trainer.epoch
        self.info.speed = trainer.speed_record
        self.emit(RunStarted(self.run, self.config.train.epochs, trainer.epoch))
        self.folder.write_info(self.info)
        self.folder.write_shifts(self.monitor.rows)

    def _resume(self) -> None:
        """From the newest checkpoint that passes every check and loads; one that reads but
        does not load (a tensor of another shape) gives way to the one before it."""
        self._fresh()
        # a checkpoint of an earlier version carries the hash its rule gave (every key kept)
        resolved, device_type = self.info.config, self.device.type
        hashes = {self.info.config_hash, fingerprint(config_identity(resolved, device_type))}
        self.info.notes = []
        for name, state in self.folder.resume_points(
            hashes, self.config.train.epochs, self.info.notes
        ):
            try:
                self.trainer.load_state_dict(state)
                self.monitor.load_state_dict(state["shift_rows"])
                self.rows = [EpochRow.from_dict(row) for row in state["rows"]]
                return
            except Exception as err:  # readable but unusable: an older one may do
                why = " ".join(f"{err.__class__.__name__}: {err}".split())[:200]
                self.info.notes.append(f"{name} unusable ({why}), skipped")
                self._fresh()

    def _fresh(self) -> None:
        self.trainer = new_trainer(self.config, self.run, self.data, self.device)
        self.monitor = new_monitor(self.config, self.data, self.device)

    def train(self) -> None:
        """The remaining epochs: each one's row written, then its checkpoint (a kill in
        between repeats the epoch), then the record."""
        trainer, monitor = self.trainer, self.monitor
        with self.folder.metrics(self.labels, self.rows) as metrics:
            while not trainer.done:
                row = trainer.run_epoch(lambda s, n: self.emit(Stepped(self.run, s, n)))
                figures = monitor.after_epoch(trainer.model, trainer.epoch, trainer.device_options)
                row = replace(row, **asdict(figures))
                metrics.write(row)
                self.rows.append(row)
                self.folder.write_shifts(monitor.rows)
                self._checkpoint([metrics.cells(r) for r in self.rows])
                self.info.epochs_completed = trainer.epoch
                self.info.speed = trainer.speed_record
                self.folder.write_info(self.info)
                self.emit(EpochDone(self.run, row))

    def _checkpoint(self, rows: list[dict[str, Any]]) -> None:
        state = {
            **self.trainer.state_dict(),
            "shift_rows": self.monitor.rows,
            "config_hash": self.info.config_hash,
            "config": self.info.config,  # the run's resolved config, as run.json holds it
            "rows": rows,
        }
        self.folder.save_checkpoint(state, self.trainer.epoch, self.config.train.keep_checkpoints)

    def finish(self) -> None:
        """BN re-calibration, after the last checkpoint, which keeps the model as trained: a
        kill here re-calibrates again on resume, with the same result. Where it fails, the
        trained run stands; only its diagnostic is lost."""
        if not self.config.train.recalibrate_bn:
            return
        trainer = self.trainer
        try:
            figures = self.monitor.recalibrate(
                trainer.model, trainer.epoch, trainer.test_loader, trainer.device_options
            )
        except Exception as err:
            self.info.notes.append(f"BN re-calibration failed ({err.__class__.__name__}: {err})")
            return
        if figures is not None:
            self.rows[-1] = self.rows[-1].recalibrated(figures)
        self.folder.metrics(self.labels, self.rows).close()
        self.folder.write_shifts(self.monitor.rows)

    def end(self, status: Status, detail: str = "", trace: str | None = None) -> Outcome:
        """The final record: written even where the disk is full (that error must not hide
        the run's own); after a completed run, checkpoints go where the config says."""
        last = self.rows[-1] if self.rows else None
        self.info.status, self.info.error, self.info.traceback = status, detail or None, trace
        self.info.epochs_completed = len(self.rows)
        self.info.finished_at = datetime.now(timezone.utc).isoformat()
        elapsed = self.earlier_seconds + time.perf_counter() - self.started
        self.info.wall_seconds = round(elapsed, 3)
        self.info.final = {**self.run.grid_values, **last.to_dict()} if last else None
        with contextlib.suppress(OSError):
            self.folder.write_info(self.info)
        self.emit(RunEnded(self.run, status, detail))
        if status is Status.COMPLETED and self.config.train.keep_checkpoints == "none":
            self.folder.drop_checkpoints()  # only once completed is on disk
        return Outcome(status, detail)


def make_loaders(
    data: ImageData,
    config: DataConfig,
    train_config: TrainConfig,
    *,
    seed: int,
    device: torch.device,
) -> tuple[Loader, Loader]:
    """A run's (train, test) loaders, of the pipeline ``config.pipeline`` names: the
    device-resident DeviceLoader ("device"), or the textbook TorchvisionLoader
    ("torchvision"), which reads the same files through a torchvision dataset."""

    def device_loader(train: bool, split: Split, index: torch.Tensor | None) -> Loader:
        # the split is the subset already; the index is the textbook pipeline's
        batch_size = train_config.batch_size if train else train_config.eval_batch_size
        return DeviceLoader(
            split, batch_size=batch_size, device=device, train=train, stats=data.stats,
            augment=train_config.augment, flip=flips(config), seed=seed,
        )  # fmt: skip

    def textbook_loader(train: bool, split: Split, index: torch.Tensor | None) -> Loader:
        # imported here: only this pipeline needs torchvision, which is slow to import
        from bnorder.data.textbook import TorchvisionLoader, torchvision_dataset

        return TorchvisionLoader(
            torchvision_dataset(config.root, train=train, cache_dir=config.cache_dir),
            split.labels,
            index=index,
            batch_size=train_config.batch_size if train else train_config.eval_batch_size,
            device=device,
            train=train,
            augment=train_config.augment,
            seed=seed,
            workers=config.workers,
        )

    make = textbook_loader if config.pipeline == "torchvision" else device_loader
    return make(True, data.train, data.train_index), make(False, data.test, data.test_index)
