"""A run's record, ``run.json``: what the run is (scheme, seed, config and its hashes), where
and with what it was made (``Provenance``), and how it stands (``Status``). ``RunInfo`` is the
only reader and writer of the file's contents; folder.py says where it lies.

Every write is whole or not at all (files.py): a crash never leaves a file half-written.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bnorder import __version__
from bnorder.core.files import atomic_write_text, read_bounded
from bnorder.nets.schemes import Scheme


class Status(str, Enum):
    """How a run stands (run.json ``status``), or how one attempt at it ended."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"  # the training loss stopped being finite
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: resumable
    # outcomes of an attempt that leave the run's files as they were
    SKIPPED = "skipped"  # final already, with this config
    BUSY = "busy"  # another process holds its lock
    CONFLICT = "conflict"  # another process wrote a run of another config there meanwhile

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # f"{status}" is its value on every Python version

    @property
    def final(self) -> bool:
        """Not trained again: a diverged run diverges again when rerun (on CPU, at the same
        epoch), like a completed one."""
        return self in (Status.COMPLETED, Status.DIVERGED)

    @property
    def sweep_goes_on(self) -> bool:
        """Whether a sweep started with --fail-fast starts more runs after this one."""
        return self in (Status.COMPLETED, Status.SKIPPED, Status.BUSY)


class Outcome(NamedTuple):
    """How one attempt at a run ended: its status and, where useful, why."""

    status: Status
    detail: str = ""


# ---------------------------------------------------------------- run.json

PlainValue = str | int | float | bool  # a grid point's value, as YAML and JSON hold it


class Provenance(BaseModel):
    """Where and with what a run was made, saved beside its numbers."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    device: str
    device_name: str
    host: str  # runs of one sweep may come from many machines
    bnorder: str
    torch: str
    torchvision: str
    python: str
    platform: str
    threads: int
    git_revision: str | None


class RunInfo(BaseModel):
    """run.json: what a run is (scheme, seed, config and its hashes), where it was made, and
    how it stands. Older versions' files load too: a key they lack takes its default, a key
    this version does not know is ignored. A status this version does not know (a newer one's,
    or none) reads as None: such a run is not done (with its own config it is resumed or
    trained again), and compare leaves it out. Values of the wrong type are refused (strict:
    no "3" for 3, no true for 1), so a damaged record is not trusted."""

    # assignments unchecked: the run loop fills in a record it made itself
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    scheme: str
    ops: list[str]
    head: list[str]
    seed: int
    status: Status | None
    config_hash: str = ""  # the run's identity: equal hashes, comparable numbers
    experiment_hash: str = ""  # the same less scheme and seed: one per experiment
    started_at: str = ""
    resumed_from_epoch: int | None = None
    notes: list[str] = Field(default_factory=list)
    epochs_completed: int = 0
    device: str = ""
    device_name: str = ""
    host: str = ""
    bnorder: str = ""
    torch: str = ""
    torchvision: str = ""
    python: str = ""
    platform: str = ""
    threads: int | None = None
    git_revision: str | None = None
    data_source: str = ""
    data_fingerprint: str = ""  # what it trained and tested on (empty: an older version's run)
    train_images: int | None = None
    test_images: int | None = None
    grid: dict[str, PlainValue] = Field(default_factory=dict)  # the grid point's values
    config: dict[str, Any] = Field(default_factory=dict)  # the run's resolved config
    speed: dict[str, Any] | None = None  # device options as resolved, first step's time
    traceback: str | None = None  # where it failed
    error: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None  # over all its attempts
    final: dict[str, Any] | None = None  # the last epoch's row, with the grid values

    @model_validator(mode="before")
    @classmethod
    def _as_older_versions_wrote_it(cls, data: Any) -> Any:
        """A record needs its scheme and seed; the rest of what older files lack defaults
        (the name from those two); a status read as this version's, or None."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        scheme, seed = data.get("scheme"), data.get("seed")
        if not isinstance(scheme, str) or not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("no scheme and seed")
        status = data.get("status")
        known = isinstance(status, str) and status in {s.value for s in Status}
        return {
            "name": f"{scheme}/seed{seed}",
            "ops": [],
            "head": [],
            **data,
            "status": Status(status) if known else None,
            "grid": data.get("grid") or {},
        }

    @property
    def order(self) -> Scheme:
        """The run's scheme as one value: ``ops`` and ``head`` as recorded, ``inner`` as the
        run's config holds it (none for schemes without it, and for runs of versions before)."""
        scheme = self.config.get("schemes", {}).get(self.scheme)
        inner = scheme.get("inner") if isinstance(scheme, dict) else None
        inner = tuple(inner) if isinstance(inner, list) else None
        return Scheme(tuple(self.ops), tuple(self.head), inner=inner)

    @classmethod
    def from_json(cls, data: Any) -> RunInfo:
        """Raises ValueError, in one line naming the key, where ``data`` is not a run record."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            said = first.get("ctx", {}).get("error", first["msg"])  # a validator's own words
            where = ".".join(str(part) for part in first["loc"][:2])
            raise ValueError(f"{where}: {said}" if where else str(said)) from None

    def to_json(self) -> dict[str, Any]:
        """The record as run.json holds it: what a run has not reached yet (its end, its
        device options, a traceback) is left out rather than written as null."""
        data = self.model_dump()
        data["status"] = self.status and self.status.value
        unreached = ["traceback"] if self.traceback is None else []
        if self.speed is None:
            unreached.append("speed")
        if self.status is Status.RUNNING:
            unreached += ["error", "finished_at", "wall_seconds", "final"]
        return {key: value for key, value in data.items() if key not in unreached}

    @property
    def done(self) -> bool:
        """Final: not to be trained again (see Status.final)."""
        return self.status is not None and self.status.final

    @property
    def epochs(self) -> Any:
        """The epochs its config asks for (None where the record lacks them)."""
        train = self.config.get("train") if isinstance(self.config, dict) else None
        return train.get("epochs") if isinstance(train, dict) else None


def _git_revision() -> str | None:
    """The project's commit, where the package runs from a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        # --no-optional-locks: status must not take the repository's index.lock from under a
        # git command the user is running
        command = ["git", "--no-optional-locks", "-C", str(here), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True)
        return done.stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):  # the revision stands; call the tree clean
        dirty = ""
    return f"{revision}-dirty" if dirty else revision


def provenance(device: torch.device) -> Provenance:
    """This process's provenance, for a run on ``device``."""
    import torchvision  # here: slow to import, and needed only once a run starts

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return Provenance(
        device=str(device),
        device_name=name,
        host=platform.node(),
        bnorder=__version__,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        threads=torch.get_num_threads(),
        git_revision=_git_revision(),
    )


RUN_FILE_BYTES = 16 * 2**20  # a run.json is a few kB; a traceback in it may be long


def read_info(path: Path) -> RunInfo:
    """Raises OSError or ValueError where ``path`` is not a readable run record."""
    try:
        return RunInfo.from_json(json.loads(read_bounded(path, RUN_FILE_BYTES, "run.json")))
    except RecursionError:  # nested deeper than json can follow
        raise ValueError("nested too deeply") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
