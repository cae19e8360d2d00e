"""The prompt format equals UserLM-8b's official template, text and ids, with the real Llama-3.1 vocab."""

import json

import pytest

from fixtures import OFFICIAL_TEMPLATE
from userlm_local.text.prompt_format import USERLM_TEMPLATE, ChatFormat
from userlm_local.cli import main
from userlm_local.text.conversation import Conversation
from userlm_local.util.errors import UserError
from userlm_local.text.tokenizer import Tokenizer

INTENT = "You are a user chatting with an assistant language model to plan a 3-day trip to Kyoto on a budget."
USER_TURNS = [
    "kyoto trip ideas? cheap pls",
    "  what about temples,  are they free??\n\nalso food",
    "ok 2nd day: arashiyama — bamboo 🎋 & monkeys; cost ~¥550?",
    "def plan(days: int) -> list[str]:\n    return ['x'] * days  # is this right",
    "12345678901234567890 thanks!!!",
]
ASSISTANT_TURNS = [
    "Sure! Kyoto is great on a budget. Here are some ideas:\n- Fushimi Inari (free)\n- Nishiki Market",
    "Many temples charge ¥400–¥600; Fushimi Inari is free.",
    "Yes — the Iwatayama Monkey Park costs ¥550 for adults.",
    "Almost: `['x'] * days` works, but you probably want distinct entries.",
    "You're welcome! Enjoy Kyoto.",
]


def conversation(turns: int, intent=INTENT):
    msgs = [{"role": "system", "content": intent}] if intent else []
    for u, a in list(zip(USER_TURNS, ASSISTANT_TURNS))[:turns]:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def fmt(tokenizer_dir):
    return ChatFormat(Tokenizer.from_dir(tokenizer_dir))


def test_package_template_is_the_official_one():
    assert USERLM_TEMPLATE == OFFICIAL_TEMPLATE


def test_fixture_tokenizer_is_real_llama31_plus_endconversation(fmt):
    ids = fmt.ids
    assert (ids.eot, ids.end_of_text, ids.start_header, ids.end_header, ids.newline) == (128009, 128001, 128006, 128007, 198)
    assert ids.end_conversation == 128256
    assert not fmt.tokenizer.is_special(ids.end_conversation)
    assert fmt.tokenizer.vocab_size == 128257


@pytest.mark.parametrize("turns", range(6))
@pytest.mark.parametrize("intent", [INTENT, None])
def test_prompt_text_and_ids_equal_official_template(turns, intent, fmt, hf_tokenizer, tiny_model, tmp_path, capsysbinary):
    msgs = conversation(turns, intent)
    if not msgs:
        pytest.skip("transformers refuses an empty conversation")
    expected_text = hf_tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=OFFICIAL_TEMPLATE)
    expected_ids = hf_tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    conv = Conversation.from_messages(fmt, msgs)
    assert conv.tokens == expected_ids
    assert fmt.render(msgs) == expected_ids
    assert fmt.text(conv.tokens) == expected_text

    # The CLI prints exactly that text, and exactly those ids.
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(msgs, ensure_ascii=False))
    assert main(["prompt", str(tiny_model), "--conversation", str(path)]) == 0
    assert capsysbinary.readouterr().out == expected_text.encode("utf-8")
    assert main(["prompt", str(tiny_model), "--conversation", str(path), "--ids"]) == 0
    assert json.loads(capsysbinary.readouterr().out) == expected_ids


def test_prompt_ends_with_open_user_header_and_no_bos(fmt):
    ids = Conversation(fmt, INTENT).tokens
    assert ids[0] == fmt.ids.start_header
    assert ids[-3:] == [fmt.ids.start_header, fmt.tokenizer.encode("user")[0], fmt.ids.end_header]
    with_bos = Conversation(ChatFormat(fmt.tokenizer, add_bos=True), INTENT).tokens
    assert with_bos == [fmt.ids.bos] + ids


def test_generated_ids_are_kept_not_retokenized(fmt):
    conv = Conversation(fmt, INTENT)
    # "\n" + "hel" + "lo" is not how the tokenizer would split "hello": the ids must be kept as sampled.
    sampled = [fmt.ids.newline, *fmt.tokenizer.encode("hel"), *fmt.tokenizer.encode("lo")]
    assert fmt.tokenizer.encode("\nhello") != sampled
    before = list(conv.tokens)
    conv.add_user(ids=sampled)
    assert conv.tokens == before + sampled + [fmt.ids.eot]
    assert conv.messages[-1] == {"role": "user", "content": "hello"}
    conv.add_assistant("Hi there.")
    assert conv.tokens[: len(before) + len(sampled)] == before + sampled


def test_special_token_text_in_content_stays_text(fmt):
    conv = Conversation(fmt, INTENT)
    conv.add_user("write <|eot_id|> literally")
    body = conv.tokens[len(Conversation(fmt, INTENT).tokens):-1]
    assert fmt.ids.eot not in body


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "it is the assistant's turn"),
    ([{"role": "assistant", "content": "a"}], "it is the user's turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
    ([{"role": "tool", "content": "a"}], "unknown role"),
    ([{"role": "user", "content": 3}], "'content' must be a string"),
    ([{"role": "system", "content": "  "}], "intent is empty"),
])
def test_invalid_sequences_raise_clear_errors(fmt, messages, message):
    with pytest.raises(UserError, match=message):
        Conversation.from_messages(fmt, messages)


def test_nothing_after_the_end(fmt):
    conv = Conversation(fmt, INTENT)
    conv.end()
    assert conv.ended
    with pytest.raises(UserError, match="already ended"):
        conv.add_user("more")
