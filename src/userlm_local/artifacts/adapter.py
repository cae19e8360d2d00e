"""A LoRA adapter bundle (``adapter.safetensors`` + its meta): read it, and merge it into a base.

The merge is plain numpy, so a user's machine builds the default UserLM without torch
(``defaults.model``), and ``train.export`` checks its own export with the same arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..util.errors import UserError
from .safetensors import Checkpoint


def merged_tensors(src, meta: dict, adapter: dict[str, np.ndarray]):
    """(HF name, float32 array) of the base with every adapter merged in: W + scale * B A,
    and the embedding with the added rows appended."""
    scale = float(meta["scale"])
    for name, w in src.tensors():
        a, b = adapter.get(name + ".lora_A"), adapter.get(name + ".lora_B")
        if a is not None and b is not None:
            w = w + scale * (b.astype(np.float32) @ a.astype(np.float32))
        if name == "model.embed_tokens.weight":
            rows = adapter[name + ".added_rows"].astype(np.float32)
            if w.shape[0] != meta["first_new_token"] or rows.shape[1] != w.shape[1]:
                raise UserError("the bundled adapter does not fit the installed base model")
            w = np.concatenate([w, rows])
        yield name, np.ascontiguousarray(w, dtype=np.float32)


def read_adapter(bundle: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(bundle)
    return {name: ckpt.load_f32(ref) for name, ref in ckpt.tensors.items()}
