"""Flipping conversations into UserLM training samples (K user turns -> K+1 samples)."""

from __future__ import annotations

import pytest

from userlm_local.text.prompt_format import ChatFormat
from userlm_local.text.conversation import Conversation
from userlm_local.data import Dialogue, Sample, flip, load_dialogues
from userlm_local.data.flip import IGNORE
from userlm_local.text.tokenizer import Tokenizer

INTENT = "You are a user chatting with an assistant language model to plan a weekend hike."


@pytest.fixture(scope="module")
def fmt(tokenizer_dir):
    return ChatFormat(Tokenizer.from_dir(tokenizer_dir))


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("USERLM_LOCAL_CACHE", str(tmp_path_factory.getbasetemp() / "userlm-data-cache"))


def dialogue(k: int = 3, intent: str = INTENT) -> Dialogue:
    msgs = []
    for i in range(k):
        msgs.append({"role": "user", "content": f"user turn {i}: where should I hike, and is trail {i} steep?"})
        msgs.append({"role": "assistant", "content": f"assistant answer {i} with some advice.\nLine two."})
    return Dialogue("d1", msgs, intent)


def target(fmt: ChatFormat, s: Sample) -> list[int]:
    return [t for t in s.labels if t != IGNORE]


def check_shape(s: Sample) -> int:
    """labels: -100 on a prefix, then equal to input_ids; returns the first label position."""
    assert len(s.input_ids) == len(s.labels)
    start = next(i for i, t in enumerate(s.labels) if t != IGNORE)
    assert all(t == IGNORE for t in s.labels[:start])
    assert s.labels[start:] == s.input_ids[start:]
    return start


def test_k_turns_give_k_plus_one_samples(fmt):
    d = dialogue(3)
    samples = flip(fmt, d)
    assert [s.kind for s in samples] == ["turn", "turn", "turn", "end"]
    assert [s.turn for s in samples] == [0, 1, 2, 3]
    for i, s in enumerate(samples):
        start = check_shape(s)
        if s.kind == "turn":
            assert fmt.text(target(fmt, s)) == "\n" + d.user_turns()[i] + "<|eot_id|>"
            assert target(fmt, s) == fmt.body(d.user_turns()[i]) + [fmt.ids.eot]
            history = d.messages[:2 * i]
        else:
            assert target(fmt, s) == [fmt.ids.newline, fmt.ids.end_conversation, fmt.ids.eot]
            assert fmt.text(target(fmt, s)) == "\n<|endconversation|><|eot_id|>"
            history = d.messages
        # the prompt is exactly what the runtime feeds: system intent, history, open user header
        expected = Conversation.from_messages(fmt, [{"role": "system", "content": INTENT}, *history]).tokens
        assert s.input_ids[:start] == expected
        assert s.input_ids[:start] == fmt.render([{"role": "system", "content": INTENT}, *history])
        assert s.input_ids[start - 3:start] == fmt.open_user()
        assert fmt.ids.bos not in s.input_ids


def test_without_intent_has_no_system_message(fmt):
    with_i = flip(fmt, dialogue(2))
    without = flip(fmt, dialogue(2), with_intent=False)
    assert len(without) == 3
    for a, b in zip(with_i, without):
        assert target(fmt, a) == target(fmt, b)
        assert fmt.text(b.input_ids).startswith("<|start_header_id|>user<|end_header_id|>\n")
        assert "system" not in fmt.text(b.input_ids)
    assert flip(fmt, dialogue(2, intent=""))[0].input_ids == without[0].input_ids


def test_trailing_user_turn_gives_no_end_sample(fmt):
    d = dialogue(2)
    d.messages.append({"role": "user", "content": "one more question"})
    samples = flip(fmt, d)
    assert [s.kind for s in samples] == ["turn", "turn", "turn"]
    assert fmt.text(target(fmt, samples[-1])) == "\none more question<|eot_id|>"


def test_max_len_drops_oldest_exchanges_keeps_intent(fmt):
    d = dialogue(6)
    full = flip(fmt, d, max_len=None)
    longest = max(len(s.input_ids) for s in full)
    limit = longest - 40
    cut = flip(fmt, d, max_len=limit)
    assert len(cut) == len(full)
    assert all(len(s.input_ids) <= limit for s in cut)
    trimmed = [s for s in cut if s.dropped_exchanges]
    assert trimmed and all(s.turn >= 1 for s in trimmed)
    for a, b in zip(full, cut):
        assert target(fmt, a) == target(fmt, b)
        start = check_shape(b)
        history = d.messages[2 * b.dropped_exchanges:2 * b.turn if b.kind == "turn" else len(d.messages)]
        assert b.input_ids[:start] == fmt.render([{"role": "system", "content": INTENT}, *history])
    # a target that cannot fit even with no history drops the sample
    tiny = flip(fmt, d, max_len=len(fmt.message("system", INTENT)) + 10)
    assert [s.kind for s in tiny] == ["end"] and tiny[0].dropped_exchanges == 6


def test_real_dialogues_flip(fmt):
    for d in load_dialogues("train", limit=30):
        samples = flip(fmt, d, max_len=None)
        turns = d.user_turns()
        assert len(samples) == len(turns) + 1
        for s, text in zip(samples, turns):
            check_shape(s)
            assert fmt.tokenizer.decode(target(fmt, s)) == "\n" + text + "<|eot_id|>"
        assert samples[-1].kind == "end"
        capped = flip(fmt, d)
        assert all(len(s.input_ids) <= 2048 for s in capped)
