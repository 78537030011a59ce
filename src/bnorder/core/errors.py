"""The one error type bnorder raises for input it cannot use.

Every ``BnorderError`` is bad input (a config key, a path, a folder of results): the CLI turns
it into one line and exit code 2, in one place (``cli.app``). Anything else, an ``OSError``
from a full disk included, is not the user's input and is not reported as if it were.
"""

from __future__ import annotations


class BnorderError(Exception):
    """Input bnorder cannot use; the message names the key or path and says what to do."""


class PathError(BnorderError):
    """A path the user named that cannot be used as asked (missing, not a folder, not
    writable): raised where it is read or written, the message naming the path and why."""
