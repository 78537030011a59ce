"""``bnorder diagnose``: a run rebuilt from its folder (run.json and its newest checkpoint),
and its variance shift measured per BN layer; with re-calibration, tested before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnorder.data.catalog import DataError
from bnorder.data.loaders import load_data
from bnorder.runs.config import ExperimentConfig, build_config
from bnorder.runs.folder import RunFolder
from bnorder.runs.plan import plan_runs
from bnorder.runs.records import read_info
from bnorder.runs.runloop import new_monitor, new_trainer
from bnorder.runs.train import configure_process, evaluate


@dataclass
class Diagnosis:
    """One run's variance shift by BN layer, and what re-calibration did where asked."""

    scheme: str
    seed: int
    epoch: int  # epochs the checkpoint had trained
    layers: list[dict[str, Any]]  # per BN layer: layer, name, running_var, real_var, shift
    sample: int  # training images measured on: those asked for, or all there are where fewer
    recalibration: str | None = None  # the mode used, where re-calibrated
    test_acc: float | None = None
    test_acc_recalibrated: float | None = None
    layers_recalibrated: list[dict[str, Any]] = field(default_factory=list)


def diagnose_run(folder: str | Path, *, sample: int = 2000, recalibrate: bool = False) -> Diagnosis:
    """Rebuild a run (finished or not) on the CPU and measure its variance shift on ``sample``
    fixed, un-augmented training images; with ``recalibrate``, also re-calibrate BN as the
    run's config says and test before and after. Raises DataError with the path where the
    folder is not a readable run."""
    run_folder = RunFolder(Path(folder))
    config, config_hash = _stored_config(run_folder, sample)
    state, notes = run_folder.resume_point({config_hash})
    if state is None:
        detail = f" ({'; '.join(notes)})" if notes else " (keep_checkpoints)"
        raise DataError(f"{folder}: no checkpoint of this run to rebuild the model from{detail}")
    data = load_data(config.data.model_copy(update={"download": False}))
    run = plan_runs(config)[0]  # the run's config has its one scheme and seed
    cpu = torch.device("cpu")
    configure_process(config.train, cpu)  # the run's own threads
    trainer = new_trainer(config, run, data, cpu)
    try:  # the weights only: any checkpoint format has them
        trainer.model.load_state_dict(state["model"])
        trainer.epoch = int(state["epoch"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise DataError(f"{folder}: checkpoint does not fit the run's model ({err})") from None
    monitor = new_monitor(config, data, cpu)
    measured = len(monitor.sample.labels) if monitor.sample is not None else 0
    result = Diagnosis(
        run.scheme, run.seed, trainer.epoch, monitor.measure(trainer.model), measured
    )
    if recalibrate and result.layers:
        result.test_acc = evaluate(trainer.model, trainer.test_loader, trainer.device_options)[1]
        figures = monitor.recalibrate(
            trainer.model, trainer.epoch, trainer.test_loader, trainer.device_options
        )
        result.test_acc_recalibrated = figures.test_acc_recalibrated
        result.recalibration = config.train.recalibration
        result.layers_recalibrated = [row for row in monitor.rows if row["recalibrated"]]
    return result


def _stored_config(folder: RunFolder, sample: int) -> tuple[ExperimentConfig, str]:
    """The run's config as its record holds it, on the CPU, measuring on ``sample`` images;
    and its config hash. Raises DataError."""
    try:
        info = read_info(folder.info_file)
        stored = {**info.config, "output": str(folder.path), "device": "cpu"}
        stored["train"] = {**stored["train"], "vshift_sample": sample}
        return build_config(stored, source=str(folder.path)), info.config_hash
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{folder.info_file}: not a readable run ({err})") from None
