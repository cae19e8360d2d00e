"""GGUF export: our writer, llama.cpp quantization, imatrix, validation, manifest, errors.

Converted files are made once per test session (session fixtures) from the tiny fixture
model.  The cross-check against llama.cpp's own ``convert_hf_to_gguf.py`` takes the
script from the llama-cpp-python sdist (``pip download``; skipped when unreachable).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fixtures import OFFICIAL_TEMPLATE

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

import gguf  # noqa: E402

from userlm_local.text.prompt_format import template_sha256  # noqa: E402
from userlm_local.convert import find_artifact, to_gguf  # noqa: E402
from userlm_local.convert.imatrix import load_imatrix  # noqa: E402
from userlm_local.convert.tokenizer_meta import CONTROL, NORMAL, USER_DEFINED  # noqa: E402

from convert_support import (BF16, F16, F32, LABELS, artifact, quiet, read)


# ---------------------------------------------------------------- every type converts, loads and runs

def test_every_quant_type_converts_loads_and_decodes(converted, manifest, tiny_model):
    from userlm_local.runtime.backends.llama_cpp import load
    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.text.tokenizer import Tokenizer

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
    from userlm_local.runtime.backends.llama_cpp import load
    from userlm_local.convert.validate import PARITY_SUITE
    from userlm_local.text.tokenizer import Tokenizer

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
            assert a["imatrix"]["datasets"] == ["builtin"]  # what bench's label reads
            assert a["made_from"] == "tiny-userlm-v1-F16.gguf"
    # loaders find artifacts through the manifest
    man, art, path = find_artifact(out, "q4_k_m")
    assert art["quant"] == "Q4_K_M" and path == out / art["file"]
    assert find_artifact(out / "tiny-userlm-v1-Q8_0.gguf")[1]["quant"] == "Q8_0"
    assert find_artifact(out)[1]["quant"] == "BF16"


def test_imatrix_is_mean_squared_input(converted, tiny_model):
    import torch
    from transformers import LlamaForCausalLM

    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.convert.calibration import calibration_ids
    from userlm_local.text.tokenizer import Tokenizer

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
    assert a["imatrix"]["datasets"] == ["builtin"]  # the file's own record, not its name
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
