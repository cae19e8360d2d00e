"""GGUF export from other sources: bf16 / f16 / sharded checkpoints, the parallel writer, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from userlm_local.convert import to_gguf  # noqa: E402
from userlm_local.convert import gguf_writer  # noqa: E402

from convert_support import (F16, assert_one_line_error,  # noqa: E402
                             quiet, read, run_cli, write_safetensors)


# ---------------------------------------------------------------- sources: bf16 / f16 / shards, no torch

def test_bf16_sharded_source_matches_fp32_source(converted, bf16_sharded, tmp_path):
    """BF16 from a bf16 sharded checkpoint == BF16 from the fp32 one, tensor for tensor."""
    _, out = converted
    res = to_gguf(bf16_sharded, tmp_path / "o", "bf16", name="tiny-userlm-v1", validate=False, **quiet())
    ours, ref = read(res.files[0]), read(out / "tiny-userlm-v1-BF16.gguf")
    assert ours.tensors.keys() == ref.tensors.keys()
    for name in ref.tensors:
        np.testing.assert_array_equal(ours.tensor(name), ref.tensor(name), err_msg=name)
    assert res.manifest["source"]["dtype"] == "BF16"
    assert len([f for f in res.manifest["source"]["files"] if f.endswith(".safetensors")]) == 2


def test_f16_source_and_quantizing_from_bf16(bf16_sharded, tmp_path):
    """A bf16 source quantizes from a (temporary) BF16 file; an f16 source converts too."""
    from userlm_local.artifacts.safetensors import Checkpoint, bf16_to_f32

    res = to_gguf(bf16_sharded, tmp_path / "q", "q8_0", validate=True, logit_check=False, **quiet())
    a = res.manifest["artifacts"][0]
    assert a["made_from"] == f"temporary {bf16_sharded.name}-BF16.gguf (deleted)" and a["validation"]["passed"]
    assert {p.name for p in (tmp_path / "q").iterdir()} == {"manifest.json", f"{bf16_sharded.name}-Q8_0.gguf"}
    # f16 single-file source
    d = tmp_path / "f16src"
    d.mkdir()
    for f in bf16_sharded.iterdir():
        if f.suffix in (".json", ".jinja") and "index" not in f.name:
            shutil.copy(f, d / f.name)
    ck = Checkpoint(bf16_sharded)
    write_safetensors(d / "model.safetensors", {
        n: ("F16", bf16_to_f32(np.asarray(ck.raw(r))).astype(np.float16)) for n, r in ck.tensors.items()})
    res = to_gguf(d, tmp_path / "f", "f16", validate=False, **quiet())
    assert res.manifest["source"]["dtype"] == "F16"
    g = read(res.files[0])
    name = "blk.0.attn_q.weight"
    assert g.tensors[name].type == F16 and g.tensor(name).shape == (256, 256)


def test_parallel_writer_is_byte_identical_and_hashes_what_it_writes(converted, tiny_model, tmp_path, monkeypatch):
    """Small chunks (many per tensor, Q/K permuted per chunk) converted on 1 and on 3 threads give
    the session's F16 byte for byte, and the returned sha256 is the file's."""
    import hashlib

    from userlm_local.convert.source import open_source

    _, out = converted
    want = (out / "tiny-userlm-v1-F16.gguf").read_bytes()
    monkeypatch.setattr(gguf_writer, "CHUNK_BYTES", 64 * 256 * 4)  # 64 rows of a 256-wide f32 matrix
    source = open_source(tiny_model)
    for threads in (1, 3):
        path = tmp_path / f"t{threads}.gguf"
        info = gguf_writer.write_gguf(source, path, "F16", progress=False, threads=threads)
        got = path.read_bytes()
        assert got == want, threads
        assert info["sha256"] == hashlib.sha256(got).hexdigest() and info["bytes"] == len(got)


def test_error_in_a_conversion_thread_is_one_line(tiny_model, tmp_path, capsys):
    """A weight beyond float16's range is found by a worker thread: one-line error, nothing left,
    no thread left running."""
    import threading

    d = tmp_path / "big"
    shutil.copytree(tiny_model, d)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = 1e6
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "o"
    rc, _, err = run_cli("convert", d, "--quant", "f16", "--out", out, "--quiet", "--threads", "2", capsys=capsys)
    assert_one_line_error(rc, err, "beyond float16")
    assert "blk.1.ffn_up.weight" in err and "bf16" in err
    assert list(out.iterdir()) == []
    assert not [th.name for th in threading.enumerate() if th.name.startswith(("gguf-convert", "hash-source"))]


def test_works_without_torch(tiny_model, tmp_path):
    """With torch unimportable: the writer works (no torch needed) and the logit check is
    recorded as skipped, the other checks still run."""
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from userlm_local.convert import to_gguf\n"
        f"r = to_gguf({str(tiny_model)!r}, {str(tmp_path / 'o')!r}, 'f16', progress=False, log=lambda m: None)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') and sys.modules[m]]\n"
        "print(json.dumps(r.manifest['artifacts'][0]['validation']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout.strip().splitlines()[-1])
    assert v["logits"] == v["logits_vs_fp32"] == "skipped: torch not installed"
    assert v["passed"] and v["tokenization"]["ok"] and v["metadata"]["ok"]
    assert (tmp_path / "o" / "tiny-userlm-v1-F16.gguf").stat().st_size > 100_000_000
