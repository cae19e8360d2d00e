"""Campaign policies: context limits, built-in intent sets, llama.cpp reproducibility."""

import json
from pathlib import Path

import pytest

from userlm_local.cli import main
from userlm_local.text.conversation import Conversation
from userlm_local.simulation.intent_sets import load_intents

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = f"script:{EXAMPLES / 'garden-replies.txt'}"


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def intents_file(tmp_path):
    p = tmp_path / "intents.txt"
    p.write_text("You are a user chatting with an assistant language model to grow basil indoors.\n"
                 "You are a user chatting with an assistant language model to repaint a kitchen.\n")
    return p


def test_context_end_and_truncate(gguf_files, intents_file, tmp_path, capsys):
    q8 = gguf_files["q8_0"]
    common = ["simulate", "--quiet", "--user", q8, "--assistant", SCRIPT, "--intents", intents_file,
              "--max-turns", 8, "--max-new-tokens", 8, "--n-ctx", 160]
    end, trunc = tmp_path / "end.jsonl", tmp_path / "trunc.jsonl"
    assert main([str(a) for a in common + ["--out", end]]) == 0
    assert {r["ended_by"] for r in records(end)} == {"context"}
    assert main([str(a) for a in common + ["--context", "truncate", "--out", trunc]]) == 0
    recs = records(trunc)
    assert {r["ended_by"] for r in recs} == {"max_turns"}
    assert all(sum(m["role"] == "user" for m in r["messages"]) == 8 for r in recs)  # the full transcript is kept


def test_drop_oldest_exchange_keeps_ids_of_the_rest(torch_backend):
    fmt = torch_backend.fmt
    conv = Conversation(fmt, "You are a user chatting with an assistant language model to learn knots.")
    for i in range(3):
        conv.add_user(f"turn {i} about the bowline")
        conv.add_assistant(f"answer {i}: left over right")
    ref = Conversation(fmt, conv.intent)
    for i in (1, 2):
        ref.add_user(f"turn {i} about the bowline")
        ref.add_assistant(f"answer {i}: left over right")
    assert conv.drop_oldest_exchange()
    assert conv.tokens == ref.tokens
    assert conv.drop_oldest_exchange()
    assert not conv.drop_oldest_exchange()  # the latest exchange and the intent always stay


def test_builtin_intent_sets():
    held = load_intents("heldout", 3)
    assert len(held) == 3 and all(i.text.startswith("You are a user chatting with an assistant language model to")
                                  for i in held)
    he = load_intents("humaneval")
    assert len(he) == 164 and he[0].id == "HumanEval/0" and "def has_close_elements" in he[0].text


def test_llama_cpp_same_seed_same_transcripts(gguf_files, intents_file, tmp_path):
    """llama.cpp at concurrency 1 is bit-reproducible; at 4 the batches differ from 1's, and a row's
    floating-point sums with them, so only the statistics are shared with concurrency 1 (a run at 4
    repeats itself: test_campaign_rounds)."""
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        argv = ["simulate", "--quiet", "--user", gguf_files["q8_0"], "--assistant", SCRIPT, "--intents",
                intents_file, "--trials", 2, "--max-turns", 3, "--max-new-tokens", 8, "--seed", 5, "--out", out]
        assert main([str(a) for a in argv]) == 0
        outs.append([r["messages"] for r in records(out)])
    assert outs[0] == outs[1]
    out4 = tmp_path / "c4.jsonl"
    argv = ["simulate", "--quiet", "--user", gguf_files["q8_0"], "--assistant", SCRIPT, "--intents",
            intents_file, "--trials", 2, "--max-turns", 3, "--max-new-tokens", 8, "--seed", 5,
            "--concurrency", 4, "--out", out4]
    assert main([str(a) for a in argv]) == 0
    recs = records(out4)
    assert sorted((r["intent_id"], r["trial"]) for r in recs) == [("1", 0), ("1", 1), ("2", 0), ("2", 1)]
    assert all(r["usage"]["cached_tokens"] > 0 for r in recs)  # KV kept across turns in the shared context


def test_sampling_local_assistant_is_reproducible(tmp_path):
    """A local assistant that samples draws from a stream keyed by (seed, intent id, trial, prompt
    length): two campaigns give the same transcripts, whatever objects the process allocated."""
    from userlm_local.assistants.local import LocalAssistant
    from userlm_local.runtime.backends import load_backend
    from userlm_local.simulation.campaign import Campaign, CampaignConfig
    from userlm_local.defaults import tiny_assistant_model, tiny_user_model

    intents = load_intents("heldout", 2)
    user = load_backend(tiny_user_model())
    runs, keep = [], []
    for n in range(2):
        assistant = LocalAssistant.load(str(tiny_assistant_model()), temperature=1.0, max_tokens=12, seed=3)
        keep.append(assistant)  # both alive at once: nothing is reused between the runs by accident
        out = tmp_path / f"{n}.jsonl"
        Campaign(user, assistant, CampaignConfig(max_turns=3, max_new_tokens=8, seed=3), {}).run(
            intents, out, resume=False)
        runs.append([r["messages"] for r in records(out)])
        if n == 0:
            first = records(out)
    assert runs[0] == runs[1]
    for r in first:  # what each conversation cost the assistant: the prompts it read, the KV it kept
        msgs = r["messages"]
        prompts = [assistant.prompt_ids(msgs[1:i]) for i, m in enumerate(msgs) if m["role"] == "assistant"]
        u = r["usage"]["assistant"]
        assert u["prompt_tokens"] == sum(map(len, prompts))
        assert len(prompts) <= u["completion_tokens"] <= 12 * len(prompts)
        assert (u["cached_tokens"] > 0) == (len(prompts) > 1) and u["cached_tokens"] < u["prompt_tokens"]
    replies = [m["content"] for r in runs[0] for m in r if m["role"] == "assistant"]
    assert replies and len(set(replies)) == len(replies)


def test_stats_from_records_add_up_as_the_campaign_counts_them():
    """What a Ray run adds up from the records it receives: each model's seconds and tokens; a
    remote user model has no prefill/decode split and an assistant without usage makes the sum
    unknown, not zero."""
    from userlm_local.simulation.campaign import Stats

    s = Stats()
    usage = {"prefill_tokens": 10, "cached_tokens": 5, "decode_tokens": 20, "user_seconds": 2.0,
             "prefill_seconds": 0.5, "decode_seconds": 1.5, "assistant_seconds": 3.0,
             "assistant": {"prompt_tokens": 40, "completion_tokens": 30, "cached_tokens": 10,
                           "prefill_seconds": 1.0, "decode_seconds": 2.0}}
    s.add_record(usage)
    s.add_record(usage)
    t = s.timing(wall=12.0)
    assert t["user_model"]["decode_tok_s"] == round(40 / 3.0, 1)
    assert t["user_model"]["prefill_tok_s"] == 20.0 and t["assistant"]["decode_tok_s"] == 15.0
    assert t["assistant"]["prefill_tokens"] == 60 and t["assistant"]["prefill_tok_s"] == 30.0
    assert t["share"] == {"user_model": round(4 / 12, 3), "assistant": 0.5, "other": round(2 / 12, 3)}
    s.add_record({**usage, "prefill_seconds": None, "decode_seconds": None, "assistant": None})
    t = s.timing(wall=18.0)
    assert t["user_model"]["prefill_tok_s"] is None and t["assistant"]["completion_tokens"] is None


def test_a_conversation_ended_before_any_reply_keeps_the_assistant_summary():
    """The user ending at its first turn (intent i4 here) costs the assistant nothing: zero usage,
    not 'not reported', which once blanked the whole run's assistant line."""
    from userlm_local.defaults import tiny_assistant_model, tiny_user_model
    from userlm_local.simulation.build import CampaignSpec, build_campaign
    from userlm_local.simulation.intent_sets import Intent
    from userlm_local.simulation.transcripts import MemorySink

    c = build_campaign(CampaignSpec(user=str(tiny_user_model()), assistant=str(tiny_assistant_model()), max_turns=3,
                                    max_new_tokens=16, assistant_max_tokens=8))
    sink = MemorySink()
    intents = [Intent(f"i{k}", f"You are a user chatting with an assistant language model to learn about topic "
                               f"number {k}.") for k in range(5)]
    stats = c.run(intents, sink)
    replies = {r["intent_id"]: sum(m["role"] == "assistant" for m in r["messages"]) for r in sink.records}
    assert replies["i4"] == 0  # the case under test: no reply at all
    assert stats.assistant_usage is not None and stats.assistant_usage["completion_tokens"] > 0


def test_a_turn_the_user_session_refuses_ends_the_conversation_as_context(gguf_files):
    """Without a ``before_turn`` check (or one that misses), the user model's session refusing a
    turn past its context ends that conversation as ``context``; it used to raise out of the loop
    (and so stop every conversation of a campaign beside it)."""
    from userlm_local.runtime.backends.llama_cpp import load
    from userlm_local.simulation.converse import EndedBy, converse
    from userlm_local.simulation.user import UserSimulator

    backend = load(gguf_files["q8_0"], n_ctx=160)
    try:
        sim = UserSimulator(backend, max_new_tokens=8)
        user = sim.start("You are a user chatting with an assistant language model to grow basil indoors.", seed=1)
        replies = []

        def reply(turn_no):
            replies.append(turn_no)
            return "Basil likes light and warm soil. " * 8  # ~80 tokens: the second or third turn cannot fit

        try:
            ended, error = converse(user, reply, max_turns=6)
        finally:
            user.session.close()
        assert (ended, error) == (EndedBy.CONTEXT, None) and 1 <= len(replies) < 5
    finally:
        backend.close()
