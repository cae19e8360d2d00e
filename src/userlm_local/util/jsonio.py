"""The one way this package parses JSON it did not write: every failure is a ``ValueError``.

``json.loads`` of a text nested past the interpreter's recursion limit (``"[" * 100_000``) raises
``RecursionError``, which no ``except ValueError`` catches: a hostile file, request body or server
answer became a traceback.  ``loads`` turns it into ``TooDeep``, a ``ValueError`` whose ``msg``
("nested too deeply") reads like ``json.JSONDecodeError.msg``, so a caller names the failure in its
own one-line message.  ``load_file`` adds the bounded read of a user's file (``files.read_bounded``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .files import read_bounded

TOO_DEEP = "nested too deeply"


class TooDeep(ValueError):
    """JSON nested deeper than the parser's recursion reaches."""

    msg = TOO_DEEP  # as json.JSONDecodeError's: the reason without a position

    def __init__(self, what: str = ""):
        super().__init__(f"{what} is JSON {TOO_DEEP}" if what else TOO_DEEP)


def loads(data: str | bytes | bytearray, what: str = ""):
    """``json.loads``, raising ``TooDeep`` (``str`` "nested too deeply", or "<what> is JSON nested
    too deeply" when ``what`` names the text) instead of ``RecursionError``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise TooDeep(what) from None


def load_file(path: str | Path, max_bytes: int, what: str):
    """The JSON value of a UTF-8 file of at most ``max_bytes`` (a ``UserError`` "<path>: larger than N
    MiB; not <what>" past it); ``OSError`` and ``ValueError`` (not UTF-8, not JSON, ``TooDeep``) pass."""
    return loads(read_bounded(path, max_bytes, what).decode("utf-8"))
