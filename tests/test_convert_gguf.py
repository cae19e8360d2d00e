"""GGUF export: our writer, llama.cpp quantization, imatrix, validation, manifest, errors.

Converted files are made once per test session (session fixtures) from the tiny fixture
model.  The cross-check against llama.cpp's own ``convert_hf_to_gguf.py`` takes the
script from the llama-cpp-python sdist (``pip download``; skipped when unreachable).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import OFFICIAL_TEMPLATE, llama_cpp_sdist_tree

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

import gguf  # noqa: E402

from userlm_local import cli  # noqa: E402
from userlm_local.prompt_format import template_sha256  # noqa: E402
from userlm_local.convert import find_artifact, to_gguf  # noqa: E402
from userlm_local.convert import gguf_writer  # noqa: E402
from userlm_local.convert.gguf_meta import GGUFFile  # noqa: E402
from userlm_local.convert.imatrix import load_imatrix  # noqa: E402
from userlm_local.convert.tokenizer_meta import CONTROL, NORMAL, USER_DEFINED  # noqa: E402

ALL = "f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs"
LABELS = ["F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"]
LLAMA_CPP_VERSION = "0.3.36"


def quiet(**kw):
    return dict(progress=False, log=lambda m: None, **kw)


@pytest.fixture(scope="session")
def converted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "out"
    result = to_gguf(tiny_model, out, ALL, imatrix="compute", calibration="builtin",
                     calibration_conversations=8, **quiet())
    return result, out


@pytest.fixture(scope="session")
def manifest(converted):
    _, out = converted
    return json.loads((out / "manifest.json").read_text())


def artifact(manifest, label):
    (a,) = [a for a in manifest["artifacts"] if a["quant"] == label]
    return a


def read(path) -> GGUFFile:
    """Our fast reader (gguf.GGUFReader takes ~15 s on a Llama-3 vocabulary; see
    test_fast_reader_agrees_with_gguf_reader)."""
    return GGUFFile(path)


BIG_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
F32, F16, BF16 = 0, 1, 30


def run_cli(*argv, capsys):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ---------------------------------------------------------------- every type converts, loads and runs

def test_every_quant_type_converts_loads_and_decodes(converted, manifest, tiny_model):
    from userlm_local.backends.llama_cpp import load
    from userlm_local.prompt_format import ChatFormat
    from userlm_local.tokenizer import Tokenizer

    result, out = converted
    assert not result.failed
    assert sorted(a["quant"] for a in manifest["artifacts"]) == sorted(LABELS)
    fmt = ChatFormat(Tokenizer.from_dir(tiny_model))
    prompt = fmt.render([{"role": "system", "content": "You are a user who wants a haiku about rain."}])
    sizes = {}
    for label in LABELS:
        a = artifact(manifest, label)
        path = out / a["file"]
        assert path.is_file() and path.stat().st_size == a["bytes"]
        assert a["validation"]["passed"], (label, a["validation"])
        backend = load(path, n_ctx=256)
        try:
            s = backend.new_session()
            logits = s.extend(prompt)
            for _ in range(3):
                assert np.isfinite(logits).all()
                logits = s.extend([int(np.argmax(logits))])
            assert len(s.tokens) == len(prompt) + 3
        finally:
            backend.close()
        sizes[label] = a["bytes"]
    assert sizes["Q4_K_M"] < sizes["Q8_0"] < sizes["F16"] == sizes["BF16"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or ".base." in p.name]


def test_f16_and_bf16_pass_the_logit_gate(manifest):
    """Gated: against torch emulating the file's arithmetic.  Recorded: against plain fp32 torch."""
    for label in ("F16", "BF16"):
        v = artifact(manifest, label)["validation"]
        lg, fp32 = v["logits"], v["logits_vs_fp32"]
        assert lg["reference"].startswith(f"torch emulating {label}")
        assert lg["ok"] and lg["mean_kld"] <= 1e-3 and lg["top1_agreement"] >= 0.99, lg
        assert fp32["reference"].startswith("torch float32") and "ok" not in fp32
        print(f"\n{label}: vs emulating torch {_fmt(lg)}; vs fp32 torch {_fmt(fp32)}")
    # the plain fp32 comparison: F16 is well inside the KLD gate even on the random fixture
    assert artifact(manifest, "F16")["validation"]["logits_vs_fp32"]["mean_kld"] <= 1e-3
    for label in LABELS[2:]:
        lg = artifact(manifest, label)["validation"]["logits"]
        assert lg["reference"].startswith("F16 GGUF") and "ok" not in lg  # recorded, not gated
        print(f"{label} vs F16 GGUF: {_fmt(lg)}")


def _fmt(lg):
    return f"mean KLD {lg['mean_kld']:.3g}, max {lg['max_kld']:.3g}, top-1 {lg['top1_agreement']:.3f} ({lg['positions']} pos)"


def test_tokenization_parity_recorded_for_every_artifact(manifest):
    for a in manifest["artifacts"]:
        tk = a["validation"]["tokenization"]
        assert tk["ok"] and tk["equal"] == tk["cases"] >= 20, tk
        assert tk["special_ids"]["<|endconversation|>"] == [128256, 128256]
        assert tk["special_ids"]["<|eot_id|>"] == [128009, 128009]


def test_tokenization_parity_direct(converted, tiny_model):
    """HF (ours) vs llama.cpp's tokenizer on the suite plus extra cases, outside the validator."""
    from userlm_local.backends.llama_cpp import load
    from userlm_local.convert.validate import PARITY_SUITE
    from userlm_local.tokenizer import Tokenizer

    _, out = converted
    hf = Tokenizer.from_dir(tiny_model)
    backend = load(out / "tiny-userlm-v1-Q4_K_M.gguf", n_ctx=64)
    try:
        extra = ["<|endconversation|> in the middle <|endconversation|>", "x" * 300, "1" * 40,
                 "\u00a0non-breaking\u2003em space", "tab\tand\r\ncrlf", "İstanbul ß ẞ"]
        for text in PARITY_SUITE + extra:
            assert hf.encode(text) == backend.tokenizer.encode(text), text
        # non-special added token: matched as text by both, control tokens are not
        assert hf.encode("<|endconversation|>") == [128256]
        assert 128009 not in backend.tokenizer.encode("<|eot_id|>")
        # and it survives decoding as text (USER_DEFINED, not CONTROL)
        assert backend.tokenizer.decode([128256], skip_special=True) == "<|endconversation|>"
    finally:
        backend.close()


# ---------------------------------------------------------------- metadata

def test_metadata_of_our_f16(converted, tiny_model):
    _, out = converted
    g = read(out / "tiny-userlm-v1-F16.gguf")
    f = g.kv
    assert f["general.architecture"] == "llama"
    assert f["general.file_type"] == 1
    assert f["llama.block_count"] == 2 and f["llama.embedding_length"] == 256
    assert f["llama.feed_forward_length"] == 768
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.freq_base"] == 500000.0 and f["llama.rope.dimension_count"] == 64
    assert f["llama.context_length"] == 131072 and f["llama.vocab_size"] == 128257
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "llama-bpe"
    assert f["tokenizer.ggml.bos_token_id"] == 128000
    assert f["tokenizer.ggml.eos_token_id"] == 128009  # not config.json's 128001
    assert f["tokenizer.ggml.eot_token_id"] == 128009
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == OFFICIAL_TEMPLATE
    assert f["general.sampling.temp"] == pytest.approx(0.6)
    assert f["general.sampling.top_p"] == pytest.approx(0.9)
    t = f["tokenizer.ggml.token_type"]
    assert t[128009] == CONTROL and t[128000] == CONTROL and t[128006] == CONTROL
    assert t[128256] == USER_DEFINED and t[198] == NORMAL
    assert f["tokenizer.ggml.tokens"][128256] == "<|endconversation|>" and len(f["tokenizer.ggml.tokens"]) == 128257
    assert f["tokenizer.ggml.merges"][0] == "Ġ Ġ"
    tensors = g.tensors
    assert tensors["rope_freqs.weight"].type == F32 and tensors["blk.0.attn_norm.weight"].type == F32
    assert tensors["blk.0.attn_q.weight"].type == F16 and tensors["token_embd.weight"].type == F16
    assert tensors["blk.0.attn_q.weight"].shape == (256, 256) and tensors["blk.0.attn_k.weight"].shape == (128, 256)
    assert "output.weight" in tensors and len(tensors) == 2 * 9 + 4
    assert read(out / "tiny-userlm-v1-BF16.gguf").tensors["blk.0.ffn_up.weight"].type == BF16


def test_qk_permutation_and_rope_factors(converted, tiny_model):
    """Q/K rows are llama.cpp's permutation of the HF rows; rope_freqs follow the llama3 formula."""
    from safetensors.numpy import load_file

    _, out = converted
    hf = load_file(str(tiny_model / "model.safetensors"))
    g = read(out / "tiny-userlm-v1-F16.gguf")
    tensors = {name: g.tensor(name) for name in g.tensors}

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    q = hf["model.layers.1.self_attn.q_proj.weight"]
    k = hf["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"], permute(q, 4).astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"], permute(k, 2).astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"],
                                  hf["model.layers.1.self_attn.v_proj.weight"].astype(np.float16))
    factors = tensors["rope_freqs.weight"]
    assert factors.shape == (32,) and factors[0] == 1.0 and factors[-1] == 8.0
    assert np.all(np.diff(factors) >= 0)


# ---------------------------------------------------------------- manifest and imatrix

def test_manifest_contract(converted, manifest, tiny_model):
    import hashlib

    _, out = converted
    m = manifest
    assert m["format"] == "gguf" and m["schema"] == 1
    assert m["tool"]["name"] == "userlm-local" and m["tool"]["version"] and m["tool"]["gguf"]
    assert m["created"].endswith("+00:00")
    src = m["source"]
    assert Path(src["path"]) == tiny_model.resolve() and src["dtype"] == "F32"
    want = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert src["files"]["model.safetensors"] == want and "tokenizer.json" in src["files"]
    tok = m["tokenizer"]
    assert (tok["eot"], tok["end_of_text"], tok["end_conversation"]) == (128009, 128001, 128256)
    assert (tok["start_header"], tok["end_header"], tok["newline"]) == (128006, 128007, 198)
    assert tok["eos_sources"]["config"] == 128001 and tok["eos"] == 128009 and "eos_note" in tok
    assert m["chat_template"] == OFFICIAL_TEMPLATE
    assert m["chat_template_sha256"] == template_sha256(OFFICIAL_TEMPLATE) and m["chat_template_is_userlm"]
    assert m["sampling"]["generation_config"] == {"temperature": 0.6, "top_p": 0.9}
    assert m["sampling"]["presets"]["paper"] == {"temperature": 1.0, "top_p": 0.8}
    for a in m["artifacts"]:
        assert a["sha256"] == hashlib.sha256((out / a["file"]).read_bytes()).hexdigest()
        assert a["created"] and isinstance(a["validation"], dict)
        if a["quant"] in ("F16", "BF16"):
            assert a["imatrix"] is None and a["made_from"] == "source"
        else:
            assert a["imatrix"]["file"] == "imatrix.gguf" and a["imatrix"]["calibration"] == "builtin"
            assert a["made_from"] == "tiny-userlm-v1-F16.gguf"
    # loaders find artifacts through the manifest
    man, art, path = find_artifact(out, "q4_k_m")
    assert art["quant"] == "Q4_K_M" and path == out / art["file"]
    assert find_artifact(out / "tiny-userlm-v1-Q8_0.gguf")[1]["quant"] == "Q8_0"
    assert find_artifact(out)[1]["quant"] == "BF16"


def test_imatrix_is_mean_squared_input(converted, tiny_model):
    import torch
    from transformers import LlamaForCausalLM

    from userlm_local.prompt_format import ChatFormat
    from userlm_local.convert.calibration import calibration_ids
    from userlm_local.tokenizer import Tokenizer

    _, out = converted
    im = load_imatrix(out / "imatrix.gguf")
    assert len(im.sums) == 2 * 7 + 1  # q k v o gate up down per layer + output
    assert im.sums["blk.0.ffn_down.weight"].shape == (768,)
    assert im.sums["blk.1.attn_q.weight"].shape == (256,)
    means = im.means()
    assert all((v > 0).all() for v in means.values())
    # recompute one entry independently: mean over tokens of x² at the input of layer 0's q_proj
    fmt = ChatFormat(Tokenizer.from_dir(tiny_model))
    ids, _ = calibration_ids(fmt, source="builtin", n=8, max_tokens=512)
    model = LlamaForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    seen: dict[str, list] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda m, a, name=name: seen.setdefault(name, []).append(a[0][0]))
    with torch.inference_mode():
        for x in ids:
            model(input_ids=torch.tensor([x]), use_cache=False)
    for hf, gguf_name in (("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
                          ("model.layers.1.self_attn.o_proj", "blk.1.attn_output.weight"),
                          ("model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight"),
                          ("lm_head", "output.weight")):
        x = torch.cat(seen[hf]).double()
        np.testing.assert_allclose(means[gguf_name], (x * x).mean(0).numpy(), rtol=1e-5, err_msg=gguf_name)
        assert im.counts[gguf_name] == sum(len(i) for i in ids)


def test_reuses_float_artifact_and_imatrix_file(converted, manifest, tiny_model, tmp_path, monkeypatch):
    """A later run into the same directory quantizes from the F16 already there (no rewrite),
    and ``--imatrix FILE`` reads a llama.cpp-format imatrix and records it."""
    from userlm_local.convert import pipeline

    _, out = converted
    d = tmp_path / "o"
    d.mkdir()
    os.link(out / "tiny-userlm-v1-F16.gguf", d / "tiny-userlm-v1-F16.gguf")
    (d / "manifest.json").write_text(json.dumps(dict(manifest, artifacts=[artifact(manifest, "F16")])))

    def no_write(*a, **k):
        raise AssertionError("the F16 base must not be written again")

    monkeypatch.setattr(pipeline, "write_gguf", no_write)
    res = to_gguf(tiny_model, d, "q4_k_m", imatrix=str(out / "imatrix.gguf"), validate=False, **quiet())
    a = artifact(res.manifest, "Q4_K_M")
    assert a["made_from"] == "tiny-userlm-v1-F16.gguf"
    assert a["imatrix"]["file"].endswith("imatrix.gguf")
    assert a["imatrix"]["tokens"] == load_imatrix(out / "imatrix.gguf").tokens
    assert sorted(x["quant"] for x in res.manifest["artifacts"]) == ["F16", "Q4_K_M"]
    assert {p.name for p in d.iterdir()} == {"manifest.json", "tiny-userlm-v1-F16.gguf", "tiny-userlm-v1-Q4_K_M.gguf"}
    # the same tensor types as the Q4_K_M made with the computed imatrix in the session run
    ours, ref = read(res.files[0]), read(out / "tiny-userlm-v1-Q4_K_M.gguf")
    assert {n: t.type for n, t in ours.tensors.items()} == {n: t.type for n, t in ref.tensors.items()}


def test_fast_reader_agrees_with_gguf_reader(converted):
    _, out = converted
    path = out / "imatrix.gguf"
    r = gguf.GGUFReader(str(path))
    g = read(path)
    assert {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")} == g.kv
    for t in r.tensors:
        assert np.array_equal(np.asarray(t.data).reshape(g.tensors[t.name].shape), g.tensor(t.name))
    assert g.kv["general.type"] == "imatrix" and "general.architecture" not in g.kv


# ---------------------------------------------------------------- sources: bf16 / f16 / shards, no torch

def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
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


@pytest.fixture(scope="session")
def bf16_sharded(tiny_model, tmp_path_factory):
    """The fixture re-saved as two bf16 shards with an index (no torch)."""
    from userlm_local.convert.gguf_writer import f32_to_bf16_bits
    from userlm_local.convert.safetensors_reader import Checkpoint

    d = tmp_path_factory.mktemp("bf16src")
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith("."):
            shutil.copy(f, d / f.name)
    ck = Checkpoint(tiny_model)
    names = sorted(ck.tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, part in shards.items():
        _write_safetensors(d / fname, {n: ("BF16", f32_to_bf16_bits(ck.load_f32(ck.tensors[n]))) for n in part})
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


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
    from userlm_local.convert.safetensors_reader import Checkpoint, bf16_to_f32

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
    _write_safetensors(d / "model.safetensors", {
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
    _assert_one_line_error(rc, err, "beyond float16")
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


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def _copy_model(src: Path, dest: Path, skip=()) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and not f.name.startswith("."):
            (dest / f.name).symlink_to(f)
    return dest


def _assert_one_line_error(rc, err, *words):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("userlm-local convert: error:"), err
    for w in words:
        assert w in lines[0], lines[0]


def test_not_a_llama_checkpoint(tiny_model, tmp_path, capsys):
    src = _copy_model(tiny_model, tmp_path / "m", skip={"config.json"})
    cfg = json.loads((tiny_model / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (src / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "not a Llama checkpoint")
    assert not (tmp_path / "o").exists()


def test_missing_tokenizer(tiny_model, tmp_path, capsys):
    src = _copy_model(tiny_model, tmp_path / "m", skip={"tokenizer.json"})
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "tokenizer.json")
    assert not (tmp_path / "o").exists()


def test_truncated_safetensors(tiny_model, tmp_path, capsys):
    src = _copy_model(tiny_model, tmp_path / "m", skip={"model.safetensors"})
    with open(tiny_model / "model.safetensors", "rb") as f:
        (src / "model.safetensors").write_bytes(f.read(4 << 20))
    rc, _, err = run_cli("convert", src, "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "truncated")
    assert not (tmp_path / "o").exists()


def test_unknown_quant_and_iq_without_imatrix(tiny_model, tmp_path, capsys):
    rc, _, err = run_cli("convert", tiny_model, "--quant", "f16,q3_zz", "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "unknown quant type 'q3_zz'")
    rc, _, err = run_cli("convert", tiny_model, "--quant", "iq4_xs", "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "IQ4_XS", "--imatrix")
    rc, _, err = run_cli("convert", tiny_model, "--to", "onnx", "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "unsupported output format 'onnx'")
    rc, _, err = run_cli("convert", tiny_model, "--threads", "0", "--out", tmp_path / "o", capsys=capsys)
    _assert_one_line_error(rc, err, "--threads must be >= 1")
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(converted, tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "tiny-userlm-v1-F16.gguf").write_bytes(b"old")
    rc, _, err = run_cli("convert", tiny_model, "--quant", "bf16,f16", "--out", out, capsys=capsys)
    _assert_one_line_error(rc, err, "tiny-userlm-v1-F16.gguf", "--force")
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
    _assert_one_line_error(rc, err, "no space left")
    assert list(out.iterdir()) == []
    import threading

    assert not [th.name for th in threading.enumerate() if th.name.startswith(("gguf-convert", "hash-source"))]


def test_not_enough_space_is_refused_up_front(tiny_model, tmp_path, monkeypatch, capsys):
    from userlm_local.convert import pipeline

    monkeypatch.setattr(pipeline, "free_bytes", lambda d: 10 << 20)
    out = tmp_path / "o"
    rc, _, err = run_cli("convert", tiny_model, "--quant", "f16", "--out", out, "--quiet", capsys=capsys)
    _assert_one_line_error(rc, err, "not enough free disk space")
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


# ---------------------------------------------------------------- cross-check with llama.cpp's converter

def _llama_cpp_tree() -> Path | None:
    try:
        return llama_cpp_sdist_tree()
    except RuntimeError:
        return None


@pytest.fixture(scope="session")
def llama_cpp_converted(tiny_model, tmp_path_factory):
    tree = _llama_cpp_tree()
    if tree is None:
        pytest.skip("llama-cpp-python sdist not obtainable (offline?)")
    out = tmp_path_factory.mktemp("llamacpp") / "ref-F16.gguf"
    env = dict(os.environ, PYTHONPATH=str(tree / "gguf-py"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        # convert_hf_to_gguf.py imports sentencepiece before noticing there is no tokenizer.model;
        # a stub that is never used lets it fall through to the tokenizer.json (gpt2) path.
        stub = tmp_path_factory.mktemp("stub") / "sentencepiece"
        stub.mkdir()
        (stub / "__init__.py").write_text("class SentencePieceProcessor:\n    pass\n")
        env["PYTHONPATH"] += os.pathsep + str(stub.parent)
    proc = subprocess.run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(tiny_model),
                           "--outtype", "f16", "--outfile", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


def test_cross_check_metadata_with_llama_cpp_converter(converted, llama_cpp_converted):
    _, out = converted
    ref_path, log = llama_cpp_converted
    assert "BPE pre-tokenizer was not recognized" not in log  # the fixture's tokenizer hash is llama-bpe
    ours_g, ref_g = read(out / "tiny-userlm-v1-F16.gguf"), read(ref_path)
    ours = {k: v for k, v in ours_g.kv.items() if k not in BIG_KEYS}
    ref = {k: v for k, v in ref_g.kv.items() if k not in BIG_KEYS}
    must_match = [k for k in ref if k.startswith("llama.")] + [
        "general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id", "tokenizer.chat_template"]
    for k in must_match:
        assert ours.get(k) == ref.get(k), (k, ours.get(k), ref.get(k))
    diffs = {k: (ours.get(k), ref.get(k)) for k in sorted(set(ours) | set(ref)) if ours.get(k) != ref.get(k)}
    print("\nmetadata differences (ours, llama.cpp):")
    for k, v in diffs.items():
        print(f"  {k}: {v}")
    # tokens and merges identical; token types identical except <|endconversation|>
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        assert ours_g.kv[key] == ref_g.kv[key], key
    ot, rt = (np.array(g.kv["tokenizer.ggml.token_type"]) for g in (ours_g, ref_g))
    differ = np.nonzero(ot != rt)[0].tolist()
    assert differ == [128256], differ  # llama.cpp: CONTROL (looks like <|...|>); ours: USER_DEFINED (special=false)
    assert (ot[128256], rt[128256]) == (USER_DEFINED, CONTROL)
    assert all(ot[i] == rt[i] == CONTROL for i in (128000, 128001, 128006, 128007, 128009))


def test_cross_check_tensors_with_llama_cpp_converter(converted, llama_cpp_converted):
    _, out = converted
    ours, ref = read(out / "tiny-userlm-v1-F16.gguf"), read(llama_cpp_converted[0])
    assert ours.tensors.keys() == ref.tensors.keys()
    for name, r in ref.tensors.items():
        o = ours.tensors[name]
        assert (o.type, o.shape) == (r.type, r.shape), name
        if name == "rope_freqs.weight":
            np.testing.assert_allclose(ours.tensor(name), ref.tensor(name), rtol=1e-6)
        else:
            assert np.array_equal(ours.tensor(name), ref.tensor(name)), name  # byte-identical


def test_cross_check_logits_with_llama_cpp_converter(converted, llama_cpp_converted, tiny_model):
    from userlm_local.prompt_format import ChatFormat
    from userlm_local.convert.validate import compare_logits, llama_logits, logit_conversations
    from userlm_local.tokenizer import Tokenizer

    _, out = converted
    convs = logit_conversations(ChatFormat(Tokenizer.from_dir(tiny_model)))
    ours = llama_logits(out / "tiny-userlm-v1-F16.gguf", convs, allow_non_userlm=False)
    ref = llama_logits(llama_cpp_converted[0], convs, allow_non_userlm=False)
    cmp = compare_logits(ref, ours)
    print(f"\nours vs llama.cpp converter (both F16 in llama.cpp): {cmp}")
    assert cmp["mean_kld"] < 1e-6 and cmp["top1_agreement"] == 1.0
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-3


def test_layer_by_layer_reference_equals_whole_model_torch(tiny_model, bf16_sharded, torch_backend):
    """The gate's reference, computed one decoder layer at a time from the memory-mapped weights,
    equals the torch backend's logits (F32), and the F16/BF16 emulation equals the whole model with
    every matrix and every matmul input rounded; also from a bf16 sharded checkpoint."""
    import torch
    from transformers import LlamaForCausalLM

    from userlm_local.convert.layerwise import reference_logits
    from userlm_local.convert.source import open_source
    from userlm_local.convert.validate import logit_conversations

    convs = logit_conversations(torch_backend.fmt)
    for src in (tiny_model, bf16_sharded):
        refs = reference_logits(open_source(src), convs, ["F32", "F16", "BF16"], threads=1)
        for label, low in (("F32", None), ("F16", torch.float16), ("BF16", torch.bfloat16)):
            model = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32)
            if low is not None:
                with torch.no_grad():
                    for p in model.parameters():
                        if p.ndim == 2:
                            p.copy_(p.to(low).float())
                for m in model.modules():
                    if isinstance(m, torch.nn.Linear):
                        m.register_forward_pre_hook(lambda m, a, low=low: (a[0].to(low).float(),))
            with torch.inference_mode():
                for ids, got in zip(convs, refs[label]):
                    want = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
                    assert got.shape == want.shape
                    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"{src.name} {label}")
    np.testing.assert_allclose(reference_logits(open_source(tiny_model), convs[:1], ["F32"])["F32"][0],
                               torch_backend.logits(convs[0]), atol=1e-4, rtol=0)


def test_logit_check_is_skipped_when_the_reference_cannot_fit(tiny_model, tmp_path, monkeypatch):
    """Too little memory even for the layer-by-layer reference: the check is skipped up front and
    recorded, instead of failing after the file was written."""
    from userlm_local.convert import pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 64 << 20)
    r = to_gguf(tiny_model, tmp_path / "o", "f16", **quiet())
    v = r.manifest["artifacts"][0]["validation"]
    assert v["logits"].startswith("skipped: the torch float32 reference needs")
    assert v["passed"] and v["tokenization"]["ok"]
