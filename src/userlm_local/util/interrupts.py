"""SIGTERM (``kill``, a CI timeout, a container stopping) as Ctrl-C: the work stops the same way,
its temporary files removed, a checkpoint saved where there is one, and one line said."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM inside ``sigterm_as_interrupt``."""


@contextmanager
def on_sigterm(handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` for SIGTERM while the block runs (main thread only; elsewhere a no-op)."""
    try:
        old = signal.signal(signal.SIGTERM, handler)
        installed = True
    except ValueError:  # not the main thread
        installed = False
    if not installed:  # yielded outside the except: the block's own errors carry no ValueError context
        yield
        return
    try:
        yield
    finally:  # None: the one before was not set from Python (it cannot be put back); the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _raise(signum, frame):
    raise Terminated


def sigterm_as_interrupt():
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) while the block runs."""
    return on_sigterm(_raise)
