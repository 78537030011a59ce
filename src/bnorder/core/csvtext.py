"""CSV files bnorder wrote, read whole and strictly, without pandas' parser: a results folder of
thousands of runs reads thousands of small files, where ``pd.read_csv``'s fixed cost (about 2 ms
a file) would dominate. Cells are typed as pandas would type them, so frames built from these
columns equal those ``pd.read_csv`` would give."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from bnorder.core.files import CSV_BYTES, read_bounded


def read_columns(path: Path) -> dict[str, list[str]]:
    """The file's columns, in order, as text cells. Raises ValueError naming what is wrong:
    an empty file, a last line cut short (pandas would read it as a row with empty cells,
    which is wrong, not missing, data), a repeated column, a row of the wrong length; a FIFO,
    a device, a folder or a file larger than any bnorder writes (``read_bounded``)."""
    text = read_bounded(path, CSV_BYTES, path.name).decode("utf-8")
    if not text:
        raise ValueError("empty file")
    if not text.endswith("\n"):
        raise ValueError("the last line is cut short")
    rows = [row for row in csv.reader(io.StringIO(text)) if row]  # blank lines: none
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise ValueError("a column is named twice")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"line {line} has {len(row)} cells, the header {len(header)}")
    return {name: [row[i] for row in body] for i, name in enumerate(header)}


def numbers(cells: list[str]) -> list[float] | None:
    """The cells as floats (an empty cell as NaN); None where one is not a number."""
    try:
        return [float(cell) if cell else math.nan for cell in cells]
    except ValueError:
        return None


def typed(cells: list[str]) -> list[Any]:
    """A column as pandas types it: integers where every cell is one, else numbers (empty as
    NaN), else True/False where every cell is one, else text (empty as NaN)."""
    if all(cells):
        try:
            return [int(cell) for cell in cells]
        except ValueError:
            pass
    floats = numbers(cells)
    if floats is not None:
        return floats
    if set(cells) <= {"True", "False"}:
        return [cell == "True" for cell in cells]
    return [cell if cell else math.nan for cell in cells]
