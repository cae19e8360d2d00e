"""Checkpoints (model, optimizer, step, RNG state) and the training log of a run."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..util.errors import UserError
from ..util.files import Staged, disk_errors


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("step-*.pt"))


class _Writer:
    """The file torch.save writes to, keeping the OSError of a failed write (torch replaces it
    with a RuntimeError), so that ``disk_errors`` can say what happened in one line."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = exc
            raise


def save_checkpoint(ckpt_dir: Path, state: dict, keep: int) -> Path:
    import numpy as np
    import torch

    state = dict(state, rng={"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()})
    path = ckpt_dir / f"step-{state['step']:07d}.pt"
    with disk_errors(path), Staged(path) as st:
        with open(st.tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                # torch reports a failed write (a full disk) as "unexpected pos": the OSError is ours
                if writer.error is not None:
                    raise writer.error from None
                raise
        st.commit()
    for old in checkpoint_files(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path}: unreadable checkpoint ({exc})") from None
    rng = state.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        import numpy as np

        np.random.set_state(rng["numpy"])
    return state


def read_log(path: Path, upto_step: int) -> list[dict]:
    """The log records up to ``upto_step`` (later ones belong to steps a resume redoes)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= upto_step and not rec.get("final"):
            out.append(rec)
    return out
