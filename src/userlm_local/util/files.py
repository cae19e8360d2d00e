"""Output files that appear whole or not at all: the one way this package writes a file atomically.

Each output is written to a hidden temporary file in the destination directory and
renamed into place only when complete; any failure (an exception, Ctrl-C, a full disk)
removes the temporary file.  ``disk_errors`` turns an ``OSError`` from writing into a
one-line ``UserError``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from .errors import UserError

FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Staged:
    """``with Staged(dest) as tmp: write(tmp); ...commit()`` — renamed on commit, else removed."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        fd, tmp = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.done = False

    def commit(self) -> Path:
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        os.replace(self.tmp, self.dest)
        self.done = True
        return self.dest

    def discard(self) -> None:
        if not self.done:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.done = True

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@contextlib.contextmanager
def disk_errors(what: Path):
    """Report a failed write as one line: which file, and why (disk full, permissions)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise UserError(f"{what.parent}: no space left on the device while writing {what.name}") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"{what.parent}: cannot write {what.name} ({exc.strerror})") from None
        raise


def write_text_atomic(dest: Path, text: str) -> None:
    with disk_errors(dest), Staged(dest) as st:
        st.tmp.write_text(text, encoding="utf-8")
        st.commit()


def free_bytes(directory: Path) -> int:
    import shutil

    return shutil.disk_usage(directory).free


def hash_file(path: Path, *, limit: int | None = None, each=None):
    """A sha256 object fed with ``path`` (its first ``limit`` bytes when given), 8 MiB at a
    time; ``each(chunk)`` is called before every chunk is hashed (progress, cancellation)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(8 << 20 if left is None else min(left, 8 << 20))
            if not chunk:
                break
            if each is not None:
                each(chunk)
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h


def silence_stdout() -> None:
    """After a broken pipe (the reader of our output left, ``| head``): point stdout at /dev/null
    so the interpreter's last flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def read_bounded(path, max_bytes: int, what: str) -> bytes:
    """The bytes of a user's input file, refusing one larger than ``max_bytes`` with a one-line
    ``UserError`` (a pipe stays allowed; /dev/zero is not read forever); an ``OSError`` passes."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise UserError(f"{path}: larger than {max_bytes // 2**20} MiB; not {what}")
    return raw


def read_bounded_lines(path, max_bytes: int, what: str) -> list[str]:
    """The UTF-8 lines of a user's input file (``read_bounded``); every failure one line."""
    try:
        return read_bounded(path, max_bytes, what).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc.__class__.__name__})") from None
