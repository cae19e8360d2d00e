"""The transcript file: one JSON object per finished conversation, appended and flushed.

A write is one ``write`` of a whole line followed by flush + fsync, so a crash
or SIGKILL loses no finished conversation; a torn last line (a kill in the
middle of a write) is cut away on ``--resume``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .errors import UserError


def key_of(record: dict) -> tuple[str, int, int]:
    return (str(record["intent_id"]), int(record["trial"]), int(record["seed"]))


def read_done(path: Path) -> set[tuple[str, int, int]]:
    """Keys already in ``path``; cuts a torn last line off the file."""
    if not path.exists():
        return set()
    done, good = set(), 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                done.add(key_of(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}: line {len(done) + 1} is not a transcript record; "
                                "use a new --out file") from None
            good += len(line)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


class TranscriptWriter:
    def __init__(self, path: Path, *, append: bool):
        if path.exists() and path.is_dir():
            raise UserError(f"{path}: is a directory")
        if path.parent and not path.parent.exists():
            raise UserError(f"{path.parent}: no such directory for --out")
        try:
            self.f = open(path, "ab" if append else "wb")
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        self.lock = threading.Lock()
        self.path = path

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
