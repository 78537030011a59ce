"""How a figure is written in a table cell, in the terminal and in reports alike."""

from __future__ import annotations

import math

from bnorder.runs.metrics import Unit

MISSING = "—"  # a figure not measured, or not defined (a std of one run)


def cell(value: object) -> str:
    return MISSING if isinstance(value, float) and math.isnan(value) else str(value)


def in_unit(value: float | None, unit: Unit) -> str:
    """A figure as its unit writes it (a fraction in percent, a shift with two decimals…)."""
    return MISSING if value is None else number(value * unit.scale, unit.spec)


def signed(fraction: float) -> str:
    """A difference of fractions, in points."""
    return MISSING if math.isnan(fraction) else f"{fraction * 100:+.2f}"


def number(value: float, spec: str) -> str:
    return MISSING if value is None or math.isnan(value) else format(value, spec)


def points_interval(low: float, high: float) -> str:
    """A confidence interval of a difference, already in points."""
    return MISSING if math.isnan(low) else f"{low:+.2f} to {high:+.2f}"


def interval(low: float, high: float, unit: Unit) -> str:
    """A confidence interval of a figure, in its unit; "n<2" where one run gives none."""
    return "n<2" if math.isnan(low) else f"{in_unit(low, unit)}–{in_unit(high, unit)}"


def json_value(value: object) -> object:
    """numpy scalars as Python numbers (json writes floats with repr: every digit kept); an
    infinity or NaN, which JSON lacks, as null."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value
