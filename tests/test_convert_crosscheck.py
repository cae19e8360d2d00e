"""GGUF export cross-checked against llama.cpp's own convert_hf_to_gguf.py (from the
llama-cpp-python sdist; skipped when unreachable), and the layer-by-layer logit reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import llama_cpp_sdist_tree

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from userlm_local.convert import to_gguf  # noqa: E402
from userlm_local.convert.tokenizer_meta import CONTROL, USER_DEFINED  # noqa: E402

from convert_support import (BIG_KEYS, quiet, read)


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
    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.convert.validate import compare_logits, llama_logits, logit_conversations
    from userlm_local.text.tokenizer import Tokenizer

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
