"""The transcript file: one JSON object per finished conversation, appended and flushed.

A write is one ``write`` of a whole line followed by flush + fsync, so a crash
or SIGKILL loses no finished conversation; a torn last line (a kill in the
middle of a write) is cut away on ``--resume``.

One writer at a time: ``TranscriptWriter.open`` takes an exclusive OS lock (``flock``) on a
sidecar file ``.<name>.lock`` beside the transcript (the real file's name: a symbolic link to it
takes the same lock) and, when the transcript exists, on the transcript itself (a hard link to it
is the same file), and holds them until ``close`` (which removes the sidecar), so a second
campaign on the same file is refused at once, before it loads any model (``--resume``
included).  The file is opened for appending and never truncated, except by ``--overwrite``,
which empties it only when the first new record is written (a run that fails before that
leaves the old transcript as it was), and by ``--retry-errors``, which rewrites it without its
error records (a temporary file renamed over it, or over a symbolic link's target, the link staying
a link: a crash leaves the old file or the new one; the new file is locked before it takes the old
one's place).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Protocol

from ..util import jsonio
from ..util.errors import UserError
from ..util.files import Staged, disk_errors

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
                record = jsonio.loads(line)
                key_of(record)
            except (ValueError, KeyError, TypeError):  # (jsonio.TooDeep is a ValueError)
                raise UserError(f"{path}: line {len(out) + 1} is not a transcript record; "
                                "use a new --out file") from None
            out.append((line, record))
            good += len(line)
    return out, good


def setup_of(record: dict) -> str:
    """What made a record, beyond its intent and seed: the user model, the assistant and the
    campaign settings (one string, to compare runs)."""
    user = record.get("user_model") or {}
    return json.dumps([user.get("path"), user.get("manifest_sha256"), record.get("assistant"), record.get("config")],
                      sort_keys=True)


def read_existing(path: Path) -> tuple[set[tuple[str, int, int]], set[str]]:
    """The keys already in ``path`` and the ``setup_of`` their records, in one read; cuts a torn
    last line off the file."""
    if not path.exists():
        return set(), set()
    records, good = _records(path)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return {key_of(r) for _, r in records}, {setup_of(r) for _, r in records}


def drop_errors(path: Path, *, lock: bool = False):
    """Rewrite ``path`` without its error records (atomically); how many were dropped.  A symbolic
    link is written through: its target is rewritten, the link stays a link.  With ``lock``: also
    the new file, opened and ``flock``-ed before it takes the old one's place (or None), so the
    run's lock follows the transcript to its new inode."""
    real = Path(path).resolve()
    records, _ = _records(real)
    keep = [line for line, r in records if r.get("ended_by") != "error"]
    if len(keep) == len(records):
        return (0, None) if lock else 0
    held = None
    with disk_errors(real), Staged(real) as st:
        st.tmp.write_bytes(b"".join(keep))
        if lock:
            import fcntl

            held = open(st.tmp, "rb")  # noqa: SIM115 - held until the writer closes
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a name no other run knows yet: never busy
        try:
            st.commit()
        except BaseException:
            if held is not None:
                held.close()
            raise
    return (len(records) - len(keep), held) if lock else len(records) - len(keep)


def _busy(path: Path) -> UserError:
    return UserError(f"{path}: another campaign is writing this file; wait for it to finish or choose another --out")


def _lock(path: Path):
    """An exclusive ``flock`` on the sidecar ``.<name>.lock`` of the real file (symbolic links
    resolved); the sidecar is removed on release, so a lock that wins on a file another process
    just removed tries again.  An existing transcript is locked too (a hard link to it)."""
    import fcntl

    real = path.resolve()
    lock_path = real.with_name(f".{real.name}.lock")
    while True:
        try:
            f = open(lock_path, "a")
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise _busy(path) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        held = open(real, "rb") if real.is_file() else None
    except OSError as exc:
        _release(f, lock_path)
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if held is not None:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.close()
            _release(f, lock_path)
            raise _busy(path) from None
    return f, lock_path, held


class TranscriptWriter:
    """The one writer of a transcript file; use ``open``.  The file itself is created at the
    first record, so a run that fails before any conversation leaves nothing behind."""

    def __init__(self, path: Path, lock: tuple, done: set, dropped: int = 0, *, replace: bool = False):
        self.path, (self.lock_file, self.lock_path, self.held), self.done, self.dropped = path, lock, done, dropped
        self.replace = replace  # --overwrite: the old records go when the first new one is written
        self.setups: set[str] = set()  # ``setup_of`` the records already there (--resume)
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
            dropped = 0
            if mode == "resume" and retry_errors and path.exists():
                dropped, relocked = drop_errors(path, lock=True)
                if relocked is not None:  # the transcript is a new file now: hold the lock on it
                    if lock[2] is not None:
                        lock[2].close()
                    lock = (lock[0], lock[1], relocked)
            done, setups = read_existing(path) if mode == "resume" else (set(), set())
        except BaseException:
            _release(*lock)
            raise
        writer = cls(path, lock, done, dropped, replace=mode == "overwrite")
        writer.setups = setups
        return writer

    def write(self, record: dict) -> None:
        """Append one record (flushed and fsynced); a disk error is one line (``UserError``)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            if self.lock_file is None:
                raise UserError(f"{self.path}: the transcript is closed")
            start = None
            try:
                if self.f is None:
                    self.f = open(self.path, "wb" if self.replace else "ab", buffering=0)
                    if self.held is None:  # created just now: lock it too, or a hard link made
                        self._lock_new_file()  # to it from now on would let a second run in
                fd = self.f.fileno()
                start = os.fstat(fd).st_size
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                if start is not None:  # no torn line left behind (a full disk, a size limit)
                    with contextlib.suppress(OSError):
                        os.ftruncate(self.f.fileno(), start)
                raise UserError(f"{self.path}: cannot write the transcript ({exc.strerror or exc})") from None

    def _lock_new_file(self) -> None:
        import fcntl

        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when self.f closes
        except BlockingIOError:
            self.f.close()
            self.f = None
            raise _busy(self.path) from None

    def close(self) -> None:
        with self.lock:
            if self.f is not None:
                with contextlib.suppress(OSError):
                    self.f.close()
                self.f = None
            if self.lock_file is not None:
                _release(self.lock_file, self.lock_path, self.held)
                self.lock_file = None

    def abandon(self) -> None:
        """The process exits now, from a signal handler: close as usual unless a write holds the lock
        (on the signalled thread itself it never comes back), then only the lock file goes; the
        OS drops the lock itself, and --resume drops a torn last line."""
        if self.lock.acquire(timeout=2):
            self.lock.release()
            self.close()
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)

    def __enter__(self) -> "TranscriptWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordSink(Protocol):
    """Where a campaign puts its finished conversations: a ``TranscriptWriter`` (a locked JSONL
    file), or a ``MemorySink``.  ``done`` holds the keys (``key_of``) already there."""

    done: set

    def write(self, record: dict) -> None: ...


class MemorySink:
    """Records kept in this process (a bench, a library caller), each as a JSONL line would give
    it back, so what is measured on them is what a transcript file holds."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.done: set = set()
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        rec = json.loads(json.dumps(record, ensure_ascii=False))
        with self.lock:
            self.records.append(rec)
            self.done.add(key_of(rec))


def _release(lock_file, lock_path: Path, held=None) -> None:
    try:
        os.unlink(lock_path)  # while still holding the lock: see ``_lock``
    except OSError:
        pass
    lock_file.close()
    if held is not None:
        held.close()
