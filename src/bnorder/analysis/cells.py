"""How a figure is written in a table cell, in the terminal and in reports alike."""

from __future__ import annotations

import math

import pandas as pd

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


# a text cell a spreadsheet would run as a formula (OWASP's list): names come from folders
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(frame: pd.DataFrame) -> str:
    """``frame`` as CSV for people to open: a text cell that starts like a formula (a folder
    named ``=HYPERLINK(…)``) gets a leading ``'``, which spreadsheets show as text. Numbers,
    negative ones included, are written as they are."""

    def safe(value: object) -> object:
        return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    text = frame.select_dtypes(include=["object", "string"]).columns
    return frame.assign(**{c: frame[c].map(safe) for c in text}).to_csv(index=False)
