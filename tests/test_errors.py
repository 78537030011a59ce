"""One error type for bad input, turned into its exit in one place; ``bnorder --version``."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from conftest import invoke

import bnorder
from bnorder.core.errors import BnorderError, PathError
from bnorder.core.files import writing_to


def error_classes() -> list[type[Exception]]:
    """Every exception class defined in the package."""
    found = []
    for info in pkgutil.walk_packages(bnorder.__path__, "bnorder."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Exception) and value.__module__ == module.__name__:
                found.append(value)
    return found


# raised and caught inside one module, never shown to a user as bad input
INTERNAL = {"_Stop", "Diverged", "SweepInterrupted"}


def test_every_bad_input_error_is_a_bnorder_error() -> None:
    public = [c for c in error_classes() if c.__name__ not in INTERNAL]
    assert public and all(issubclass(c, BnorderError) for c in public), public


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"bnorder {bnorder.__version__}"


def test_a_bnorder_error_anywhere_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnorder.cli import render

    def refuse(*args: object, **kwargs: object) -> None:
        raise BnorderError("somewhere: not usable")

    monkeypatch.setattr(render, "catalogue_table", refuse)
    result = invoke("schemes")
    assert result.exit_code == 2
    assert result.output.strip() == "error: somewhere: not usable"


def test_an_unexpected_os_error_is_not_reported_as_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk is not the user's input: no exit 2, and its traceback is kept."""
    from bnorder.cli import render

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(render, "catalogue_table", full_disk)
    result = invoke("schemes")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


def test_a_place_that_cannot_take_a_file_is_bad_input_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "figures"
    blocker.write_text("a file where the folder should be")
    refused = pytest.raises(PathError, match="figures: cannot write figures there")
    with refused, writing_to(blocker, "figures"):
        blocker.mkdir(parents=True, exist_ok=True)
    with pytest.raises(OSError) as raised, writing_to(tmp_path, "figures"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(raised.value, BnorderError)
