"""Helpers shared by the GGUF conversion tests (test_convert_*.py); the session fixtures that
convert the tiny model once (``converted``, ``manifest``, ``bf16_sharded``) live in conftest.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from userlm_local import cli
from userlm_local.artifacts.gguf_meta import GGUFFile

ALL = "f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs"
LABELS = ["F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"]
BIG_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
F32, F16, BF16 = 0, 1, 30


def quiet(**kw):
    return dict(progress=False, log=lambda m: None, **kw)


def artifact(manifest, label):
    (a,) = [a for a in manifest["artifacts"] if a["quant"] == label]
    return a


def read(path) -> GGUFFile:
    """Our fast reader (gguf.GGUFReader takes ~15 s on a Llama-3 vocabulary; see
    test_fast_reader_agrees_with_gguf_reader)."""
    return GGUFFile(path)


def run_cli(*argv, capsys):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, offset, blobs = {}, 0, []
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    head = json.dumps(header).encode()
    head += b" " * ((-len(head)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for b in blobs:
            f.write(b)


def copy_model(src: Path, dest: Path, skip=()) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.startswith("."):
            (dest / f.name).symlink_to(f)
    return dest


def assert_one_line_error(rc, err, *words):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("userlm-local convert: error:"), err
    for w in words:
        assert w in lines[0], lines[0]
