"""The base of every config section: strict, closed, finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: no silent "3" -> 3 or true -> 1 coercions; extra="forbid": unknown keys are errors;
    # no inf or nan: every run would fail or diverge on one
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_default=True, allow_inf_nan=False
    )
