"""A training run's directory: checked, locked, prepared and described (``checkpoints/run.json``).

``open_run`` checks the inputs, locks ``OUT`` before ``--force`` may delete a live run's directory,
prepares it and reads the run's spec; ``discard_new_run`` removes what a run that failed before its
first step made."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..artifacts.gguf_source import BASE_ALIASES
from ..util.errors import UserError
from .data import check_data
from .model import check_base
from .spec import RunSpec


def prepare_out(out: Path, *, resume: bool, force: bool) -> None:
    ckpt = out / "checkpoints"
    if resume:
        if not (ckpt / "run.json").is_file():
            raise UserError(f"{out}: nothing to resume (no checkpoints/run.json)")
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            hint = "pass --resume to continue it" if (ckpt / "run.json").is_file() else "pass --force to overwrite"
            raise UserError(f"{out}: directory is not empty; {hint}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_lock(path: Path, out: Path):
    """An exclusive lock on a run directory; a second ``train`` on it fails at once."""
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out}: another train run is using this directory; wait for it or choose another --out") from None
    return f


def check_not_running(out: Path) -> None:
    """Fail at once when another train holds the run in ``out``."""
    lock_path = out / "checkpoints" / ".lock"
    if lock_path.exists():
        run_lock(lock_path, out).close()


@dataclass
class Run:
    spec: RunSpec
    out: Path
    ckpt_dir: Path
    tok_dir: Path
    lock: object
    created: bool = False
    wall0: float = field(default_factory=time.time)


def with_absolute_paths(spec: RunSpec) -> RunSpec:
    """--data, --base and --tokenizer as absolute paths: run.json must name the same files
    whatever directory a --resume or --export-latest is started from."""
    def absolute(path: str | None) -> str | None:
        if path is None or str(path).lower() in BASE_ALIASES:
            return path
        return os.path.abspath(os.path.expanduser(path))

    return replace(spec, data=absolute(spec.data), base=absolute(spec.base), tokenizer=absolute(spec.tokenizer))


def check_inputs(spec: RunSpec) -> None:
    """What can be checked cheaply, before anything under --out is removed or created: the base,
    the tokenizer directory, the data file and its splits (the numbers are checked by RunSpec)."""
    check_base(spec)
    if spec.tokenizer and not (Path(spec.tokenizer) / "tokenizer.json").is_file():
        raise UserError(f"{spec.tokenizer}: no tokenizer.json (--tokenizer needs a tokenizer directory)")
    check_data(spec)


def saved_spec(out: Path) -> RunSpec:
    """The spec of the run in ``out`` (its checkpoints/run.json)."""
    path = out / "checkpoints" / "run.json"
    if not path.is_file():
        raise UserError(f"{out}: nothing to resume (no checkpoints/run.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a run description")
    try:
        return RunSpec.from_json(data)
    except (TypeError, ValueError, UserError) as exc:  # edited by hand, or from an older version
        raise UserError(f"{path}: not a valid run description ({exc})") from None


def open_run(spec: RunSpec, out: Path, *, resume: bool, force: bool) -> Run:
    """Check the inputs, lock ``out`` (before --force may delete a live run's directory), prepare
    it and read the run's spec (a resumed run's own; only ``threads`` is taken from ``spec``)."""
    lock_path = out / "checkpoints" / ".lock"
    check_not_running(out)
    if resume:
        saved = saved_spec(out)
        spec = replace(saved, threads=spec.threads or saved.threads)
    else:
        spec = with_absolute_paths(spec)
    check_inputs(spec)  # a bad input fails here: --force has not removed anything yet
    fresh = not out.exists()
    prepare_out(out, resume=resume, force=force)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    lock = run_lock(lock_path, out)
    return Run(spec, out, ckpt_dir, ckpt_dir / "tokenizer", lock, created=fresh)


def discard_new_run(run: Run) -> None:
    """A new run that failed before its first step leaves nothing that would need --force."""
    shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    (run.out / "train_log.jsonl").unlink(missing_ok=True)
    if run.created:
        try:
            run.out.rmdir()
        except OSError:
            pass
