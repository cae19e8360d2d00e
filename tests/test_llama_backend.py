"""The session protocol on llama.cpp: exact KV reuse, per-turn decode counts, batching, AMX handling."""

import json
import subprocess
import sys

import numpy as np
import pytest

from userlm_local.runtime.backends.llama_cpp import load
from userlm_local.cli import main
from userlm_local.text.conversation import Conversation
from userlm_local.simulation.guardrails import Guardrails
from userlm_local.simulation.user import EXHAUSTED, UserSimulator

INTENT = "You are a user chatting with an assistant language model to choose a first road bike."
REPLIES = ["What is your budget?", "Aluminium frames are a good start.", "Try a 54 cm frame.",
           "Rim brakes are cheaper.", "Buy from a local shop.", "Enjoy the ride!"]


@pytest.fixture(scope="module", params=["unified", "split"])
def f16(gguf_files, request):
    """Both KV layouts: one pool of cells (what simulate and serve load) and a stream per
    sequence (what bench loads): sessions, trims and shared batches must behave alike."""
    return load(gguf_files["f16"], n_ctx=1024, n_seq_max=4, kv_split=request.param == "split")


def close(a, b):
    """Logits from different batch splits agree within F16-KV tolerance: llama.cpp's float
    summation order depends on how a sequence was split into batches (and on the CPU's kernels),
    and a split re-rounds the F16 KV cache and F16 matmul inputs, so not bitwise.  F16 keeps 11
    significant bits: logits move by a few 2**-11 of their scale; with every move under 2**-8 of it
    (8 such steps), KL <= max|move|**2 / 2 (Hoeffding's lemma).  A wrong cache is far above that
    (one history token changed: KL ~0.04 on this model, over 15x the bound)."""
    la, lb = (x.astype(np.float64) - np.logaddexp.reduce(x.astype(np.float64)) for x in (a, b))
    kld = float(np.sum(np.exp(la) * (la - lb)))
    assert kld < (2**-8 * float(np.abs(a).max())) ** 2 / 2, kld
    assert a.argmax() == b.argmax()


def history(backend, turns=2):
    conv = Conversation(backend.fmt, INTENT)
    for i in range(turns):
        conv.add_user(f"question {i}: which size and which brakes should I get?")
        conv.add_assistant(REPLIES[i])
    return conv.tokens


def test_gguf_tokens_equal_hf_tokens(f16, torch_backend):
    conv_g = Conversation(f16.fmt, INTENT)
    conv_t = Conversation(torch_backend.fmt, INTENT)
    for conv in (conv_g, conv_t):
        conv.add_user("héllo 👋 — 12345678 tokens\t\tand  spaces")
        conv.add_assistant("<b>code</b>: `x = {'a': 1}`")
    assert conv_g.tokens == conv_t.tokens
    assert f16.fmt.ids == torch_backend.fmt.ids


def test_session_grid(f16):
    ids = history(f16)
    full = f16.logits(ids)
    s = f16.new_session()
    s.extend(ids[:9])
    last = s.extend(ids[9:])
    close(last, full[-1])  # turn-by-turn == one-shot
    s.trim(6)
    close(s.extend(ids[-6:]), full[-1])  # trim then extend == fresh
    s.close()


def test_extend_many_equals_single_sessions(f16):
    ids = history(f16, 1)
    a, b = f16.new_session(), f16.new_session()
    outs = f16.extend_many([(a, ids), (b, ids[:20])])
    close(outs[0], f16.logits(ids)[-1])
    close(outs[1], f16.logits(ids[:20])[-1])
    assert a.tokens == ids and b.tokens == ids[:20]
    a.close(), b.close()


def test_six_turns_decode_only_new_tokens(f16):
    sim = UserSimulator(f16, max_new_tokens=10)
    user = sim.start(INTENT, seed=1)
    decoded_before = 0
    for i in range(6):
        turn = user.next_turn()
        assert turn.outcome == "ok", turn
        # the session decoded exactly the ids it lacked plus the sampled ones
        new = user.session.usage.decoded - decoded_before
        assert new == turn.usage["prefill_tokens"] + turn.usage["decode_tokens"]
        decoded_before = user.session.usage.decoded
        if i:
            assert turn.usage["prefill_tokens"] < 40  # the reply and the header, never the history
        user.add_assistant(REPLIES[i])
    assert user.session.usage.decoded == len(user.session.tokens)


def test_redraw_decodes_no_prefix_token_again(f16):
    sim = UserSimulator(f16, guardrails=Guardrails(min_words=500, max_words=600, max_retries=2), max_new_tokens=5)
    user = sim.start(INTENT)
    turn = user.next_turn()
    assert turn.outcome == EXHAUSTED and len(turn.rejected) == 3
    assert turn.usage["prefill_tokens"] == len(user.conversation.tokens)
    assert user.session.usage.decoded == turn.usage["prefill_tokens"] + turn.usage["decode_tokens"]


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_quantized_types_run_in_a_fresh_process(gguf_files, quant):
    """Quantized GGUFs decode (on AMX CPUs this needs use_extra_bufts=False, which load() sets)."""
    code = ("from userlm_local.runtime.backends.llama_cpp import load;"
            f"b = load({str(gguf_files[quant])!r}, n_ctx=256);"
            "s = b.new_session(); l = s.extend(b.tokenize('hello there, how are you')); print(int(l.argmax()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().isdigit()


def test_extra_bufts_policy(monkeypatch):
    from userlm_local.runtime.backends import llama_cpp

    monkeypatch.setenv("USERLM_LLAMA_EXTRA_BUFTS", "0")
    assert llama_cpp.use_extra_bufts() is False
    monkeypatch.setenv("USERLM_LLAMA_EXTRA_BUFTS", "1")
    assert llama_cpp.use_extra_bufts() is True
    monkeypatch.delenv("USERLM_LLAMA_EXTRA_BUFTS")
    assert llama_cpp.use_extra_bufts() is (not llama_cpp.cpu_has_amx())


def test_cli_verbs_accept_gguf(gguf_files, tmp_path, capsys):
    path = str(gguf_files["q8_0"])
    assert main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "gguf" and info["is_userlm"] and info["special"]["end_conversation"] == 128256
    conv = tmp_path / "c.json"
    conv.write_text(json.dumps([{"role": "system", "content": INTENT}]))
    assert main(["prompt", path, "--conversation", str(conv), "--ids"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids[-3:] == [128006, 882, 128007]
    replies = tmp_path / "r.txt"
    replies.write_text("\n".join(REPLIES))
    assert main(["chat", path, "--intent", INTENT, "--assistant-file", str(replies), "--max-turns", "3",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.count("user> ") == 3


def test_threads_option_reaches_every_local_model(gguf_files, tmp_path, capsys, monkeypatch):
    """``simulate --threads N``: the GGUF user model's context and the torch assistant both use N
    (the torch default for a model this small is 1, llama.cpp's is every core)."""
    import torch

    from userlm_local.runtime.backends import llama_cpp, torch as torch_backend

    loaded = []

    def recording(module):  # each format's own loader: whoever calls load_backend, it ends here
        real = module.load

        def load(path, *args, **kwargs):
            loaded.append(real(path, *args, **kwargs))
            return loaded[-1]
        return load

    for module in (llama_cpp, torch_backend):
        monkeypatch.setattr(module, "load", recording(module))
    before = torch.get_num_threads()
    try:
        assert main(["simulate", "--user", str(gguf_files["f16"]), "--assistant", "tiny", "--limit", "1", "--max-turns", "1",
                     "--max-new-tokens", "4", "--threads", "2", "--quiet", "--out", str(tmp_path / "t.jsonl")]) == 0
        assert sorted(b.name for b in loaded) == ["llama.cpp", "torch"]
        ctx = next(b for b in loaded if b.name == "llama.cpp")
        assert ctx.ll.llama_n_threads(ctx.ctx) == 2 and ctx.ll.llama_n_threads_batch(ctx.ctx) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert main(["chat", str(gguf_files["f16"]), "--intent", INTENT, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_a_closed_models_tokenizer_raises_instead_of_reading_freed_memory(gguf_files):
    """llama.cpp's vocab is freed with the model: a tokenizer kept past ``close()`` must fail in
    Python (it segfaulted in bench); run in a fresh process so a crash fails this test, not the run."""
    code = ("from userlm_local.runtime.backends.llama_cpp import load;"
            f"b = load({str(gguf_files['q8_0'])!r}, n_ctx=64); tok = b.tokenizer; print(tok.encode('hi there'));"
            "b.close()\ntry:\n    tok.encode('hi there'); print('no error')\n"
            "except RuntimeError as e:\n    print('refused:', e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: this GGUF tokenizer's model was closed" in r.stdout


def test_bench_loads_a_kv_stream_per_sequence_and_others_one_pool(gguf_files, monkeypatch):
    """The layout is a load option of GGUF files only; the bench asks for split (its campaign is
    mostly prefill), every other caller gets the module's default (unified)."""
    from userlm_local.evaluation.bench_models import load_checked
    from userlm_local.runtime.backends import llama_cpp, load_options

    assert load_options(gguf_files["f16"], n_seq_max=2, kv_split=True) == {"n_seq_max": 2, "kv_split": True}
    seen, real = [], llama_cpp.LlamaCppBackend.__init__

    def spy(self, *a, **k):
        seen.append(k["kv_split"])
        real(self, *a, **k)

    monkeypatch.setattr(llama_cpp.LlamaCppBackend, "__init__", spy)
    load_checked(gguf_files["f16"], sequences=2).close()
    load(gguf_files["f16"], n_ctx=256).close()
    assert seen == [True, False] and llama_cpp.KV_SPLIT is False
