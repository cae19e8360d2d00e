"""The transcript file: one JSON object per finished conversation, appended and flushed.

A write is one ``write`` of a whole line followed by flush + fsync, so a crash
or SIGKILL loses no finished conversation; a torn last line (a kill in the
middle of a write) is cut away on ``--resume``.

One writer at a time: ``TranscriptWriter.open`` takes an exclusive OS lock (``flock``) on a
sidecar file ``.<name>.lock`` beside the transcript and holds it until ``close`` (which removes
it), so a second campaign on the same file is refused at once, before it loads any model
(``--resume`` included).  The file is opened for appending and never truncated, except by ``--overwrite``
(under the lock) and by ``--retry-errors``, which rewrites it without its error records
(a temporary file renamed over it: a crash leaves the old file or the new one).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .errors import UserError

MODES = ("new", "resume", "overwrite")


def key_of(record: dict) -> tuple[str, int, int]:
    return (str(record["intent_id"]), int(record["trial"]), int(record["seed"]))


def _records(path: Path) -> tuple[list[tuple[bytes, dict]], int]:
    """(line, record) pairs of the complete lines, and the byte length they cover."""
    out, good = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                key_of(record)
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}: line {len(out) + 1} is not a transcript record; "
                                "use a new --out file") from None
            out.append((line, record))
            good += len(line)
    return out, good


def read_done(path: Path, *, retry_errors: bool = False) -> set[tuple[str, int, int]]:
    """Keys already in ``path`` (with ``retry_errors``, those that did not end in error); cuts
    a torn last line off the file."""
    if not path.exists():
        return set()
    records, good = _records(path)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return {key_of(r) for _, r in records if not (retry_errors and r.get("ended_by") == "error")}


def drop_errors(path: Path) -> int:
    """Rewrite ``path`` without its error records (atomically); how many were dropped."""
    records, _ = _records(path)
    keep = [line for line, r in records if r.get("ended_by") != "error"]
    if len(keep) == len(records):
        return 0
    from .files import Staged, disk_errors

    with disk_errors(path), Staged(path) as st:
        st.tmp.write_bytes(b"".join(keep))
        st.commit()
    return len(records) - len(keep)


def _lock(path: Path):
    """An exclusive ``flock`` on the sidecar ``.<name>.lock``; the file is removed on release,
    so a lock that wins on a file another process just removed tries again."""
    import fcntl

    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        try:
            f = open(lock_path, "a")
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UserError(f"{path}: another campaign is writing this file; wait for it to finish "
                            "or choose another --out") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                return f, lock_path
        except FileNotFoundError:
            pass
        f.close()


class TranscriptWriter:
    """The one writer of a transcript file; use ``open``.  The file itself is created at the
    first record, so a run that fails before any conversation leaves nothing behind."""

    def __init__(self, path: Path, lock: tuple, done: set, dropped: int = 0):
        self.path, (self.lock_file, self.lock_path), self.done, self.dropped = path, lock, done, dropped
        self.f = None
        self.lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, mode: str = "new", *, retry_errors: bool = False) -> "TranscriptWriter":
        """Lock ``path`` for this process.  ``new``: the file must not exist (or be empty);
        ``resume``: ``done`` holds the keys already there; ``overwrite``: the file is emptied."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path}: is a directory")
        if not path.parent.is_dir():
            raise UserError(f"{path.parent}: no such directory for --out")
        lock = _lock(path)
        try:
            if mode == "new" and path.exists() and path.stat().st_size:
                raise UserError(f"{path} exists: pass --resume to continue it or --overwrite to replace it")
            if path.exists() and not os.access(path, os.W_OK):
                raise UserError(f"{path}: cannot write (permission denied)")
            if mode == "overwrite" and path.exists():
                with open(path, "r+b") as f:
                    f.truncate(0)
            dropped = drop_errors(path) if mode == "resume" and retry_errors and path.exists() else 0
            done = read_done(path) if mode == "resume" else set()
        except BaseException:
            _release(*lock)
            raise
        return cls(path, lock, done, dropped)

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            if self.f is None:
                try:
                    self.f = open(self.path, "ab")
                except OSError as exc:
                    raise UserError(f"{self.path}: cannot write ({exc.strerror})") from None
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.lock_file is not None:
            _release(self.lock_file, self.lock_path)
            self.lock_file = None

    def __enter__(self) -> "TranscriptWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _release(lock_file, lock_path: Path) -> None:
    try:
        os.unlink(lock_path)  # while still holding the lock: see ``_lock``
    except OSError:
        pass
    lock_file.close()
