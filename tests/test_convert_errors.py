"""GGUF export on bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import errno
import json

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from userlm_local.convert import gguf_writer  # noqa: E402

from convert_support import (assert_one_line_error,  # noqa: E402
                             copy_model, run_cli)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def test_not_a_llama_checkpoint(tiny_model, tmp_path, capsys):
    src = copy_model(tiny_model, tmp_path / "m", skip={"config.json"})
    cfg = json.loads((tiny_model / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (src / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "not a Llama checkpoint")
    assert not (tmp_path / "o").exists()


def test_missing_tokenizer(tiny_model, tmp_path, capsys):
    src = copy_model(tiny_model, tmp_path / "m", skip={"tokenizer.json"})
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "tokenizer.json")
    assert not (tmp_path / "o").exists()


def test_truncated_safetensors(tiny_model, tmp_path, capsys):
    src = copy_model(tiny_model, tmp_path / "m", skip={"model.safetensors"})
    with open(tiny_model / "model.safetensors", "rb") as f:
        (src / "model.safetensors").write_bytes(f.read(4 << 20))
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "truncated")
    assert not (tmp_path / "o").exists()


def test_unknown_quant_and_iq_without_imatrix(tiny_model, tmp_path, capsys):
    rc, _, err = run_cli("convert", tiny_model, "--quant", "f16,q3_zz", "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "unknown quant type 'q3_zz'")
    rc, _, err = run_cli("convert", tiny_model, "--quant", "iq4_xs", "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "IQ4_XS", "--imatrix")
    rc, _, err = run_cli("convert", tiny_model, "--to", "tflite", "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "unsupported output format 'tflite'", "gguf or onnx")
    rc, _, err = run_cli("convert", tiny_model, "--threads", "0", "--out", tmp_path / "o", capsys=capsys)
    assert_one_line_error(rc, err, "--threads must be >= 1")
    for name, says in (("n" * 300, "--name is 300 characters long; at most 100"),
                       ("a\tb", "use printable characters"), ("sub/dir", "without a path separator")):
        rc, _, err = run_cli("convert", tiny_model, "--name", name, "--out", tmp_path / "o", capsys=capsys)
        assert_one_line_error(rc, err, says)
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(converted, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "tiny-userlm-v1-F16.gguf").write_bytes(b"old")
    rc, _, err = run_cli("convert", tiny_model, "--quant", "bf16,f16", "--out", out, capsys=capsys)
    assert_one_line_error(rc, err, "tiny-userlm-v1-F16.gguf", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["tiny-userlm-v1-F16.gguf"]
    assert (out / "tiny-userlm-v1-F16.gguf").read_bytes() == b"old"
    rc, stdout, err = run_cli("convert", tiny_model, "--quant", "f16", "--out", out, "--force",
                              "--no-validate", "--quiet", capsys=capsys)
    assert rc == 0, err
    assert "tiny-userlm-v1-F16.gguf\tF16" in stdout and "skipped: --no-validate" in stdout
    assert (out / "tiny-userlm-v1-F16.gguf").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tiny-userlm-v1-F16.gguf"]


def test_disk_full_leaves_nothing(tiny_model, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = gguf_writer.write_chunk

    def full(fout, data, digest=None):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fout, data, digest)

    monkeypatch.setattr(gguf_writer, "write_chunk", full)
    out = tmp_path / "o"
    rc, _, err = run_cli("convert", tiny_model, "--quant", "f16,q8_0", "--out", out, "--quiet", capsys=capsys)
    assert_one_line_error(rc, err, "no space left")
    assert list(out.iterdir()) == []
    import threading

    assert not [th.name for th in threading.enumerate() if th.name.startswith(("gguf-convert", "hash-source"))]


def test_not_enough_space_is_refused_up_front(tiny_model, tmp_path, monkeypatch, capsys):
    from userlm_local.convert import pipeline

    monkeypatch.setattr(pipeline, "free_bytes", lambda d: 10 << 20)
    out = tmp_path / "o"
    rc, _, err = run_cli("convert", tiny_model, "--quant", "f16", "--out", out, "--quiet", capsys=capsys)
    assert_one_line_error(rc, err, "not enough free disk space")
    assert list(out.iterdir()) == []


def test_interrupt_leaves_nothing(tiny_model, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = gguf_writer.write_chunk

    def interrupted(fout, data, digest=None):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real(fout, data, digest)

    monkeypatch.setattr(gguf_writer, "write_chunk", interrupted)
    out = tmp_path / "o"
    rc, _, err = run_cli("convert", tiny_model, "--quant", "bf16", "--out", out, "--quiet", capsys=capsys)
    assert rc == 130
    assert list(out.iterdir()) == []


def test_sigterm_leaves_nothing(tiny_model, tmp_path):
    """``kill`` (a CI timeout, a container stopping) mid-conversion: as Ctrl-C, no hidden temporary
    file is left behind (for an 8B model it would be gigabytes), one line, exit 143."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "userlm_local.cli", "convert", str(tiny_model), "--out", str(out),
                             "--quant", "q4_k_m", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".*.tmp")):
        time.sleep(0.01)
    assert list(out.glob(".*.tmp")), "no temporary file seen"  # the F16 input of the quantization, being written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "userlm-local convert: terminated" and "Traceback" not in err
    assert list(out.iterdir()) == []
