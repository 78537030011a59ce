"""The base of every config section (strict, closed, finite), and the marks that say, on a
field itself, how it counts in a run's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: no silent "3" -> 3 or true -> 1 coercions; extra="forbid": unknown keys are errors;
    # no inf or nan: every run would fail or diverge on one
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )


@dataclass(frozen=True)
class NotIdentity:
    """On a config field (``Annotated[str, NotIdentity("why")]``): the key does not change a
    run's numbers, so it is left out of the run's identity (its hash)."""

    why: str


@dataclass(frozen=True)
class AddedLater:
    """On a config field added after runs were first written: at ``earlier``, the value that
    does what versions before it did, the key is left out of the identity, so that runs
    written before it keep their hash (comparable, skipped when done, resumed when not)."""

    earlier: Any


def identity_marks(model: type[BaseModel], prefix: str = "") -> dict[str, NotIdentity | AddedLater]:
    """Every marked field of ``model`` and of the sections inside it, by dotted key."""
    marks: dict[str, NotIdentity | AddedLater] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        for mark in info.metadata:
            if isinstance(mark, NotIdentity | AddedLater):
                marks[key] = mark
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            marks.update(identity_marks(info.annotation, f"{key}."))
    return marks
