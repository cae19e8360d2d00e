"""A campaign whose both sides run on this process's engines runs its conversations in rounds on
one thread (``decode.drive_rounds``): at ``--concurrency`` > 1 on llama.cpp its batches, and so
its transcripts, repeat run to run (with a thread per conversation they did not: which rows
shared a batch depended on timing, and a shared batch changes llama.cpp's sums)."""

from __future__ import annotations

import json

import pytest
from test_simulate import INTENTS, records, simulate, stable

from userlm_local.assistants.local import LocalAssistant
from userlm_local.assistants.scripted import ScriptedAssistant
from userlm_local.simulation.campaign import Campaign, CampaignConfig
from userlm_local.simulation.intent_sets import Intent
from userlm_local.simulation.transcripts import MemorySink

pytest.importorskip("llama_cpp")


@pytest.fixture
def intents_file(tmp_path):
    p = tmp_path / "intents.jsonl"
    p.write_text("".join(json.dumps({"id": f"i{n}", "intent": t}) + "\n" for n, t in enumerate(INTENTS)))
    return p


@pytest.fixture(scope="module")
def user_gguf(gguf_files):
    from userlm_local.runtime.backends.llama_cpp import load

    backend = load(gguf_files["f16"], n_ctx=512, n_seq_max=4)
    yield backend
    backend.close()


def run(backend, assistant, concurrency: int, turns: int = 3):
    camp = Campaign(backend, assistant, CampaignConfig(trials=2, max_turns=turns, max_new_tokens=12, seed=5,
                                                       concurrency=concurrency), {})
    sink = MemorySink()
    camp.run([Intent(f"i{n}", t) for n, t in enumerate(INTENTS[:4])], sink)
    return camp, stable(sink.records)


def test_concurrency_4_on_llama_cpp_repeats_and_shares_batches(user_gguf):
    script = ScriptedAssistant(["Sure, here is a first idea.", "Anything else I can add?"])
    a, first = run(user_gguf, script, 4)
    b, second = run(user_gguf, script, 4)
    assert len(first) == 8
    assert first == second  # the same batches, so the same sums and draws
    assert a.lockstep and a.rounds["max_batch"] == 4 and a.rounds == b.rounds
    one, _ = run(user_gguf, script, 1)
    assert one.rounds["max_batch"] == 1  # concurrency 1: one conversation at a time, as before


def test_a_local_assistant_batches_on_its_own_engine_and_repeats(tmp_path, gguf_files, intents_file):
    """Both sides on llama.cpp (the user the tiny F16, the assistant the real SmolLM2), through the CLI."""
    from userlm_local.defaults import default_assistant_model

    common = ["--user", gguf_files["f16"], "--assistant", default_assistant_model(), "--intents", intents_file,
              "--limit", 4, "--trials", 2, "--max-turns", 3, "--max-new-tokens", 10, "--assistant-max-tokens", 16,
              "--concurrency", 4, "--seed", 3, "--threads", 2]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert simulate(*common, "--out", a) == 0
    assert simulate(*common, "--out", b) == 0
    ra = records(a)
    assert len(ra) == 8 and stable(ra) == stable(records(b))
    assert any(m["role"] == "assistant" for r in ra for m in r["messages"])


def test_an_assistant_context_that_fills_ends_that_conversation_as_an_error(user_gguf):
    """A step the assistant's session refuses is thrown into that conversation alone: an error
    record; the other conversations in its rounds go on."""
    from userlm_local.defaults import default_assistant_model

    small = LocalAssistant.load(str(default_assistant_model()), n_ctx=96, n_seq_max=4, max_tokens=40)
    try:
        camp, recs = run(user_gguf, small, 4, turns=4)
    finally:
        small.close()
    assert len(recs) == 8
    errors = [r for r in recs if r["ended_by"] == "error"]
    assert errors and all(r["error"].startswith("assistant context: the conversation needs") for r in errors)
    assert camp.stats.done == 8


def test_rounds_need_room_for_one_job():
    from userlm_local.runtime.decode import drive_rounds

    with pytest.raises(ValueError, match="concurrency must be at least 1, not 0"):
        drive_rounds([], concurrency=0)
