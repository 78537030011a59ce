"""``bnorder audit``'s subjects: what MODEL names (a run's folder, a config, a checkpoint or a
model spec) found and built here, in one place, and audited (``shift.audit``).

A run's folder is rebuilt from its record (run.json) and its newest checkpoint, and its
variance shift measured per BN layer on the run's own training sample, as the run loop
measures it; with re-calibration (as the run's config says), tested before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnorder.data.catalog import DataError
from bnorder.data.loaders import load_data
from bnorder.runs.config import ConfigError, ExperimentConfig, build_config, load_config
from bnorder.runs.folder import RunFolder
from bnorder.runs.monitor import Images, ShiftMonitor
from bnorder.runs.network import config_network, load_network
from bnorder.runs.plan import RunSpec, plan_runs
from bnorder.runs.records import read_info
from bnorder.runs.runloop import new_monitor, new_trainer
from bnorder.runs.train import Trainer, configure_process, evaluate
from bnorder.shift.audit import Audit, audit
from bnorder.shift.subjects import audit_model, check_sizes, load_model, save_recalibrated


@dataclass(frozen=True)
class AuditOptions:
    """How ``audit_subject`` builds and measures a model that is not a run's folder: a run
    rebuilds itself, so with one only ``sample`` and ``recalibrate`` apply."""

    factory: dict[str, Any] = field(default_factory=dict)  # a model factory's keyword args
    scheme: str | None = None  # with a config: its scheme (default: the first)
    weights: Path | None = None
    data: Path | None = None
    input_shape: tuple[int, ...] | None = None
    image_size: int | None = None
    sample: int = 512
    recalibrate: bool = False
    save: Path | None = None  # with recalibrate: where the re-calibrated weights are written


# the options of a model that mean nothing for a run's folder, as the command line names them
NOT_FOR_RUNS = {
    "factory": "--set",
    "scheme": "--scheme",
    "weights": "--weights",
    "data": "--data",
    "input_shape": "--input-shape",
    "image_size": "--image-size",
    "save": "--save",  # a run keeps its own checkpoints: audit its checkpoint.pt to save
}


def audit_subject(spec: str, options: AuditOptions) -> Audit:
    """``bnorder audit MODEL``: a run's folder (``audit_run``), a bnorder config's network
    (``.yaml``, for ``options.scheme``), a bnorder checkpoint (``.pt``, which rebuilds its own
    network), or ``torchvision:NAME``, ``timm:NAME``, ``FILE.py:factory`` or
    ``package.module:factory``. Raises a BnorderError in one line."""
    path = Path(spec)
    if options.save is not None and not options.recalibrate:
        raise ConfigError("--save: only with --recalibrate (it writes the re-calibrated weights)")
    if ":" not in spec and not path.exists():  # every model spec has a colon; a path need not
        raise ConfigError(
            f"{spec}: no such file or folder (a run's folder, a config or a checkpoint; or a "
            "model: torchvision:NAME, timm:NAME, FILE.py:factory, package.module:factory)"
        )
    if path.is_dir():
        given = [flag for key, flag in NOT_FOR_RUNS.items() if getattr(options, key)]
        if given:
            raise ConfigError(f"{given[0]}: not with a run's folder, which rebuilds its run")
        check_sizes(options.sample, None, measured=True)
        return audit_run(path, sample=options.sample, recalibrate=options.recalibrate)
    trained = bool({"weights", "pretrained"} & set(options.factory))
    if spec.endswith((".yaml", ".yml")):
        network = config_network(load_config(path), options.scheme)[0].build()
    elif spec.endswith(".pt"):  # a bnorder checkpoint describes its network, weights included
        network, trained = load_network(path), True
    else:
        network = load_model(spec, options.factory)
    result = audit_model(
        network,
        spec,
        pretrained=trained,
        weights=options.weights,
        data=options.data,
        input_shape=options.input_shape,
        sample=options.sample,
        recalibrate=options.recalibrate,
        image_size=options.image_size,
    )
    if options.save is not None:
        save_recalibrated(result, options.save)
    return result


@dataclass
class RebuiltRun:
    """A run as its folder left it: its config, its trainer (the checkpoint's weights
    loaded, on the CPU) and its diagnostics."""

    config: ExperimentConfig
    run: RunSpec
    trainer: Trainer
    monitor: ShiftMonitor


def audit_run(folder: str | Path, *, sample: int = 2000, recalibrate: bool = False) -> Audit:
    """Rebuild a run (finished or not) on the CPU and audit it: the noise that feeds each BN
    layer, and its variance shift on ``sample`` fixed training images as the run measured
    them; with ``recalibrate``, also re-calibrate BN as the run's config says and test
    before and after. Raises DataError with the path where the folder is not a readable run."""
    rebuilt = rebuild_run(Path(folder), sample)
    model, monitor = rebuilt.trainer.model, rebuilt.monitor
    images = Images(monitor.shift_sample) if monitor.shift_sample is not None else None
    example = next(iter(images), None) if images is not None else None
    result = audit(model, example=example)  # the structure: which noise feeds which BN
    measured = len(monitor.sample.labels) if monitor.sample is not None else 0
    run = rebuilt.run
    result.subject = f"{run.scheme} seed {run.seed}, epoch {rebuilt.trainer.epoch}"
    result.measured_on = f"{measured} training images of {folder}"
    result.measured(monitor.measure(model))
    if recalibrate and result.layers:
        _recalibrate(rebuilt, result)
    return result


def _recalibrate(rebuilt: RebuiltRun, result: Audit) -> None:
    """The test accuracy, then BN re-calibrated (on a copy) as the run's config says: its
    test accuracy and shift after."""
    trainer, monitor = rebuilt.trainer, rebuilt.monitor
    result.accuracy = evaluate(trainer.model, trainer.test_loader, trainer.device_options)[1]
    figures = monitor.recalibrate(
        trainer.model, trainer.epoch, trainer.test_loader, trainer.device_options
    )
    result.accuracy_recalibrated = figures.test_acc_recalibrated
    result.recalibration = rebuilt.config.train.recalibration
    result.recalibrated([row for row in monitor.rows if row["recalibrated"]])
    result.measured_on += f"; accuracy on its {len(trainer.test_loader.labels)} test images"


def rebuild_run(folder: Path, sample: int) -> RebuiltRun:
    """The run of ``folder`` from its record and newest checkpoint, on the CPU, measuring on
    ``sample`` training images. Raises DataError naming the folder or its files."""
    run_folder = RunFolder(folder)
    config, config_hash = _stored_config(run_folder, sample)
    state, notes = run_folder.resume_point({config_hash}, config.train.epochs)
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
    return RebuiltRun(config, run, trainer, new_monitor(config, data, cpu))


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
