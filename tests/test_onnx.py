"""ONNX: the quantizer byte for byte against onnxruntime's, the writer's states, convert --to onnx
(manifest, validation, bad input), the ONNX backend's session protocol, the CLI verbs on it, the
CUDA refusal, and our export's logits against onnxruntime-genai's own model builder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")

from userlm_local.cli import main  # noqa: E402
from userlm_local.convert.onnx_quant import dequantize_rows, quantize_rows, quantize_rows_asym  # noqa: E402
from userlm_local.convert.onnx_writer import OnnxWriter, WriterStateError  # noqa: E402
from userlm_local.util.errors import UserError  # noqa: E402

INTENT = "You are a user chatting with an assistant language model to choose a first road bike."
REPLIES = ["What is your budget?", "Aluminium frames are a good start.", "Try a 54 cm frame."]


pytestmark = pytest.mark.usefixtures("onnx_home")


@pytest.fixture(scope="module")
def trained():
    """The bundled tiny UserLM: trained, so quantization costs what it costs a real model
    (the random-weight test fixture's large logits make int4 lose most of it)."""
    from userlm_local.defaults import tiny_user_model

    return tiny_user_model()


@pytest.fixture(scope="module")
def trained_torch(trained):
    from userlm_local.runtime.backends.torch import load

    return load(trained)


@pytest.fixture(scope="module")
def onnx_out(trained, tmp_path_factory):
    from userlm_local.convert.onnx_pipeline import to_onnx

    out = tmp_path_factory.mktemp("onnx") / "out"
    result = to_onnx(trained, out, "fp32,int4,int4_mixed", progress=False, log=lambda m: None)
    assert not result.failed
    return out


@pytest.fixture(scope="module")
def fp32(onnx_out):
    from userlm_local.runtime.backends.onnx import load

    return load(onnx_out, quant="fp32", n_ctx=512)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantizer_is_byte_exact_with_onnxruntime(bits, symmetric):
    from onnxruntime.capi import _pybind_state as ort

    rng = np.random.default_rng(bits)
    for n, k in [(64, 256), (33, 96), (7, 2048), (5, 80), (3, 45)]:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        w[0, :32] = 0  # an all-zero block
        w[1] += 0.04  # blocks that do not straddle zero
        nb = (k + 31) // 32
        packed = np.zeros((n, nb, 32 * bits // 8), np.uint8)
        scales = np.zeros(n * nb, np.float32)
        zp = np.zeros(n * ((nb * bits + 7) // 8), np.uint8)
        (ort.quantize_matmul_4bits if bits == 4 else ort.quantize_matmul_8bits)(
            packed, np.pad(w.T, ((0, nb * 32 - k), (0, 0))).copy(), scales, zp, 32, n, k, symmetric)
        if symmetric:
            q, s = quantize_rows(w, bits)
            z = theirs_z = None
        else:
            q, s, z = quantize_rows_asym(w, bits)
            theirs_z = zp.reshape(n, -1)
            if nb % 2 == 0 or bits == 8:  # (an odd block count leaves a padding nibble MLAS fills its own way)
                assert np.array_equal(z, theirs_z), (n, k)
        assert np.array_equal(s.ravel(), scales)
        if k % 2 == 0 or bits == 8:
            assert np.array_equal(q, packed), (n, k)
        # the values an operator reads (the first k of each row) are equal for any k
        ours = dequantize_rows(q, s, bits, k, zero_points=z)
        assert np.array_equal(ours, dequantize_rows(packed, s, bits, k, zero_points=theirs_z))
        # within one step (the symmetric value opposite the largest one is clipped at 2**(bits-1) - 1)
        assert np.abs(ours - w).max() <= np.abs(s).max() * (1 + 1e-6)


def test_writer_refuses_misuse(tmp_path):
    w = OnnxWriter(tmp_path)
    w.tensor("a", np.zeros(3, np.float32))
    with pytest.raises(WriterStateError):
        w.tensor("a", np.zeros(3, np.float32))
    with pytest.raises(WriterStateError):
        with w.stream("b", np.float32, (2, 4)) as put:
            put(np.zeros((1, 4), np.float32))  # half of what the shape needs
    with pytest.raises(WriterStateError):
        with w.stream("c", np.float32, (1, 4)) as put:
            put(np.zeros((2, 4), np.float32))
    w.finish([], [], [], {"": 21})
    with pytest.raises(WriterStateError):
        w.tensor("d", np.zeros(1, np.float32))


def test_convert_writes_validated_directories_and_a_manifest(onnx_out):
    manifest = json.loads((onnx_out / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["tool"]["onnxruntime_genai"]
    arts = {a["quant"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"FP32", "INT4", "INT4_MIXED"}
    for a in arts.values():
        d = onnx_out / a["file"]
        assert a["kind"] == "directory" and d.is_dir()
        assert set(a["files"]) == {f.name for f in d.iterdir()}
        assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= set(a["files"])
        v = a["validation"]
        assert v["passed"] and v["tokenization"]["ok"] and v["metadata"]["stop_ids"]
        assert v["tokenization"]["special_ids"]["<|endconversation|>"] == [8191, 8191]
    assert arts["FP32"]["validation"]["logits"]["mean_kld"] < 1e-6
    assert arts["FP32"]["validation"]["logits"]["top1_agreement"] == 1.0
    int4 = arts["INT4"]["validation"]["logits"]
    assert 1e-6 < int4["mean_kld"] <= int4["gate_mean_kld"]  # quantized: measurably different, within its gate
    assert arts["INT4"]["bytes"] < arts["FP32"]["bytes"] / 3
    mixed = arts["INT4_MIXED"]["validation"]["logits"]
    assert mixed["mean_kld"] < int4["mean_kld"]  # 8 bits where 4 hurt most
    assert arts["INT4"]["bytes"] < arts["INT4_MIXED"]["bytes"] < arts["FP32"]["bytes"] / 2
    assert not [p for p in onnx_out.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_session_grid(fp32, trained_torch):
    from userlm_local.text.conversation import Conversation

    conv = Conversation(fp32.fmt, INTENT)
    for i in range(2):
        conv.add_user(f"question {i}: which size and which brakes should I get?")
        conv.add_assistant(REPLIES[i])
    ids = conv.tokens
    full = fp32.logits(ids)
    # Float32 on both sides (onnxruntime's MLAS kernels, torch's MKL ones, their order of summation
    # set by the CPU and by how the ids were batched): a dot product of K terms then errs by at most
    # K * 2**-24 of its magnitude (the standard bound), K = 768 the longest sum (the MLP's), taken at
    # the logits' scale (~21: tol ~1e-3); one history token changed moves them by ~0.05, 50x that.
    tol = trained_torch.model.config.intermediate_size * 2**-24 * float(np.abs(full).max())
    assert np.abs(full - trained_torch.logits(ids)).max() <= tol  # the same model as torch
    s = fp32.new_session()
    s.extend(ids[:9])
    last = s.extend(ids[9:])
    assert np.allclose(last, full[-1], rtol=0, atol=tol)  # turn-by-turn == one-shot
    s.trim(6)
    assert s.tokens == ids[:-6]
    assert np.allclose(s.extend(ids[-6:]), full[-1], rtol=0, atol=tol)  # trim then extend == fresh
    s.trim(len(s.tokens))
    assert np.allclose(s.extend(ids), full[-1], rtol=0, atol=tol)  # trimmed to nothing, then reused
    lp, p_end = fp32.score(ids, 5, extra=8191)
    tlp, tp_end = trained_torch.score(ids, 5, extra=8191)
    # a log-prob is a logit less the log-sum-exp of all: it moves by at most twice the logits' move
    assert np.allclose(lp, tlp, rtol=0, atol=2 * tol) and np.allclose(p_end, tp_end, rtol=0, atol=2 * tol)
    with pytest.raises(UserError):
        fp32.new_session().extend([5] * 600)  # past this session's context of 512


def test_cli_verbs_accept_onnx(onnx_out, tmp_path, capsys):
    path = str(onnx_out / "tiny-userlm-INT4")
    assert main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx" and info["is_userlm"] and info["dtype"] == "INT4"
    assert main(["info", str(onnx_out), "--json"]) == 0  # the output directory: its best artifact
    assert json.loads(capsys.readouterr().out)["dtype"] == "FP32"
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps([{"role": "system", "content": INTENT}]))
    assert main(["prompt", path, "--conversation", str(conv), "--ids"]) == 0
    ids, special = json.loads(capsys.readouterr().out), info["special"]
    assert ids[-1] == special["end_header"] and special["start_header"] in ids[-4:-1]  # an open user header
    replies = tmp_path / "r.txt"
    replies.write_text("\n".join(REPLIES))
    assert main(["chat", path, "--intent", INTENT, "--assistant-file", str(replies), "--max-turns", "2",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.count("user> ") == 2
    out = tmp_path / "t.jsonl"
    assert main(["simulate", "--user", path, "--assistant", f"script:{replies}", "--limit", "2", "--max-turns", "2",
                 "--max-new-tokens", "8", "--out", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and {r["user_model"]["backend"] for r in records} == {"onnx"}
    assert records[0]["user_model"]["quant"] == "INT4"


def test_serve_answers_the_openai_client(onnx_out):
    from serving import start_server, stop_server

    openai = pytest.importorskip("openai")
    proc, port = start_server(str(onnx_out / "tiny-userlm-INT4"), "--max-tokens", "8")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        r = client.chat.completions.create(model="default", messages=[{"role": "system", "content": INTENT}],
                                           max_tokens=8, seed=1)
        assert r.choices[0].message.role == "user" and r.usage.completion_tokens >= 1
    finally:
        stop_server(proc)


def test_cuda_is_a_clear_error_without_the_cuda_runtime(onnx_out):
    if og.is_cuda_available():
        pytest.skip("this onnxruntime-genai has CUDA")
    from userlm_local.runtime.backends.onnx import load

    with pytest.raises(UserError, match="onnxruntime-genai-cuda"):
        load(onnx_out, device="cuda")


def test_a_type_that_fails_its_gate_is_kept_marked_and_exits_1(tiny_model, tmp_path, capsys):
    """The random-weight fixture loses most of its logits to int4 (the builder's int4 does too):
    the directory is written, the manifest says why it failed, and convert exits 1."""
    out = tmp_path / "out"
    assert main(["convert", str(tiny_model), "--to", "onnx", "--quant", "int8,int4", "--out", str(out), "--quiet"]) == 1
    assert "validation failed for tiny-userlm-v1-INT8, tiny-userlm-v1-INT4 (kept" in capsys.readouterr().err
    arts = {a["quant"]: a["validation"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    for v in arts.values():
        assert not v["passed"] and v["logits"]["mean_kld"] > v["logits"]["gate_mean_kld"]
        assert v["tokenization"]["ok"] and v["metadata"]["ok"]  # only the logits failed
    assert arts["INT4"]["logits"]["mean_kld"] > arts["INT8"]["logits"]["mean_kld"]
    assert (out / "tiny-userlm-v1-INT4" / "model.onnx").is_file()


def test_bad_input_is_one_line_and_writes_nothing(trained, onnx_out, tmp_path, capsys):
    cases = [
        (["--quant", "int3"], "unknown ONNX type 'int3'"),
        (["--quant", "int4", "--imatrix"], "--imatrix applies to GGUF"),
        (["--to", "tflite"], "unsupported output format"),
    ]
    for extra, message in cases:
        out = tmp_path / "x"
        assert main(["convert", str(trained), "--to", "onnx", "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() or not any(out.iterdir())
    before = sorted(p.name for p in onnx_out.iterdir())
    assert main(["convert", str(trained), "--to", "onnx", "--quant", "int4", "--out", str(onnx_out)]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in onnx_out.iterdir()) == before
    gguf_out = tmp_path / "g"
    gguf_out.mkdir()
    (gguf_out / "manifest.json").write_text(json.dumps({"format": "gguf", "artifacts": []}))
    assert main(["convert", str(trained), "--to", "onnx", "--out", str(gguf_out)]) == 2
    assert "holds GGUF artifacts" in capsys.readouterr().err


def test_our_export_agrees_with_the_genai_builder(trained, onnx_out, tmp_path):
    """The builder (onnxruntime-genai's own exporter) and ours, fp32, logits in the same runtime."""
    pytest.importorskip("onnx_ir")
    from userlm_local.runtime.backends.onnx import load
    from userlm_local.convert.validate import compare_logits

    out = tmp_path / "builder"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(trained), "-o",
                        str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache"),
                        "--extra_options", "hf_token=false"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ids = list(range(100, 400, 5))
    theirs = load(out, n_ctx=128, allow_non_userlm=True).logits(ids)
    ours = load(onnx_out, quant="fp32", n_ctx=128).logits(ids)
    assert compare_logits([theirs], [ours])["mean_kld"] <= 1e-4


def test_an_onnx_directory_as_the_assistant_keeps_its_load_options(trained, onnx_out):
    """One helper decides which load options a format takes: an ONNX directory given as the
    assistant used to lose --n-ctx (a Path.is_file() test sent it only to GGUF files)."""
    from userlm_local.assistants.local import LocalAssistant
    from userlm_local.runtime.backends import load_options

    path = onnx_out / "tiny-userlm-FP32"
    assistant = LocalAssistant.load(str(path), n_ctx=96, threads=1)
    try:
        assert assistant.backend.context_length == 96
    finally:
        assistant.close()
    assert load_options(path, n_ctx=96, n_seq_max=2, threads=1) == {"n_ctx": 96, "n_seq_max": 2, "threads": 1}
    assert load_options(trained, n_ctx=96, n_seq_max=2, threads=1, device="cuda") == {"threads": 1, "device": "cuda"}
    # llama.cpp's KV layout goes to a GGUF only (bench asks for it whatever the candidate's format)
    assert load_options(path, n_seq_max=2, kv_split=True) == {"n_seq_max": 2}
    assert load_options(trained, kv_split=True) == {}
