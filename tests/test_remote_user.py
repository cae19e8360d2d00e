"""The user model over an OpenAI-compatible completions API (``simulate --user URL``), against
``userlm-local serve`` as the vLLM-like stand-in: token-id prompts, ``logit_bias``, ``logprobs``
with ``return_tokens_as_token_ids``, the vocabulary check, and a server that fails."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving import (
    FixtureHandler,
    start_fixture_server,
    start_server,
    stop_fixture_server,
)

from userlm_local import cli

pytest.importorskip("uvicorn")

TINY_USER = Path(__file__).resolve().parents[1] / "src" / "userlm_local" / "bundled" / "tiny-userlm"


def start(*argv: str):
    proc, port = start_server(*argv)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served():
    """The bundled tiny UserLM (torch) served as the user simulator."""
    proc, url = start(str(TINY_USER))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


class Proxy:
    """Forwards everything (errors included); the n-th POST /v1/completions gets its planned fault."""

    def __init__(self, upstream: str, plan: dict):
        self.upstream, self.plan, self.completions = upstream, plan, 0
        proxy = self

        class Handler(FixtureHandler):
            def _relay(self, body=None):
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST" if body else "GET",
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                self.send_body(data, status)

            def do_GET(self):
                if self.path.endswith("/models") and "models" in proxy.plan:
                    return self.send_body(proxy.plan["models"])
                self._relay()

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/completions") and b'"seed"' in body:  # a turn's request, not a probe
                    proxy.completions += 1
                    fault = proxy.plan.get(proxy.completions) or proxy.plan.get("all")
                    if fault == 503:
                        return self.send_body(b'{"error": {"message": "overloaded"}}', 503, ctype=None)  # no Content-Type
                    if fault == "drop":
                        self.close_connection = True
                        return self.connection.close()
                    if fault == "huge":  # 20 MB of valid JSON
                        return self.send_body(json.dumps({"choices": [{"text": "x" * 20_000_000}]}).encode())
                    if fault == "deep":  # JSON nested past the parser's recursion
                        return self.send_body(b"[" * 100_000 + b"]" * 100_000)
                self._relay(body)

        self.httpd, self.url = start_fixture_server(Handler)

    def close(self):
        stop_fixture_server(self.httpd)


def intents(tmp_path) -> Path:
    p = tmp_path / "intents.txt"
    p.write_text("You want to learn how to bake sourdough bread.\nYou need help planning a trip to Kyoto.\n")
    return p


def test_greedy_remote_turns_equal_local_ones(served):
    """Same model, same prompt ids, greedy: the remote turn is the local turn, id for id; P(end)
    from the returned top log-probs equals the local value."""
    from userlm_local.runtime.backends import load_backend
    from userlm_local.simulation.remote_user import RemoteSimulator, RemoteUserModel
    from userlm_local.runtime.sampling import PRESETS
    from userlm_local.simulation.user import UserSimulator

    greedy = PRESETS["greedy"]
    remote = RemoteUserModel(served, str(TINY_USER), sampling=greedy, max_new_tokens=24)
    remote.check()
    local = UserSimulator(load_backend(TINY_USER), sampling=greedy, max_new_tokens=24)
    compared = []
    for intent in ("You want to learn how to bake sourdough bread.", "You need help planning a trip to Kyoto."):
        lu, ru = local.start(intent), RemoteSimulator(remote).start(intent)
        for reply in ("Sure! What would you like to know?", "Here are a few ideas to start with."):
            lt, rt = lu.next_turn(), ru.next_turn()
            assert rt.token_ids == lt.token_ids and rt.text == lt.text and rt.outcome == lt.outcome
            if rt.p_end is not None:  # returned when <|endconversation|> is among the top 20
                assert math.isclose(rt.p_end, lt.p_end, rel_tol=1e-4)
                compared.append(rt.p_end)
            assert ru.conversation.tokens == lu.conversation.tokens
            if lt.ended:
                break
            lu.add_assistant(reply)
            ru.add_assistant(reply)
    assert compared  # P(end) was checked at least once


def test_redrawn_drafts_count_as_decoded_remotely_as_locally(served):
    """Greedy with the paper's guardrails: the same drafts are rejected on both sides, and the turn's
    decode_tokens counts every draft's ids on both (the remote count had the last draft's only)."""
    from userlm_local.runtime.backends import load_backend
    from userlm_local.simulation.guardrails import Guardrails
    from userlm_local.simulation.remote_user import RemoteSimulator, RemoteUserModel
    from userlm_local.runtime.sampling import PRESETS
    from userlm_local.simulation.user import UserSimulator

    rails, greedy = Guardrails.paper(max_words=4, max_retries=2), PRESETS["greedy"]  # short: drafts get redrawn
    remote = RemoteUserModel(served, str(TINY_USER), sampling=greedy, guardrails=rails, max_new_tokens=24)
    remote.check()
    local = UserSimulator(load_backend(TINY_USER), sampling=greedy, guardrails=rails, max_new_tokens=24)
    redrawn = 0
    for intent in ("You want to learn how to bake sourdough bread.", "You need help planning a trip to Kyoto."):
        lt, rt = local.start(intent).next_turn(), RemoteSimulator(remote).start(intent).next_turn()
        assert [r["text"] for r in rt.rejected] == [r["text"] for r in lt.rejected]
        assert rt.usage["decode_tokens"] == lt.usage["decode_tokens"]
        redrawn += len(lt.rejected)
    assert redrawn  # the count over several drafts was compared


def test_simulate_against_a_served_user_model(served, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    rc = cli.main(["simulate", "--user", served + "/v1", "--user-tokenizer", str(TINY_USER), "--assistant", "tiny",
                   "--intents", str(intents(tmp_path)), "--max-turns", "3", "--guardrails", "paper",
                   "--out", str(out), "--quiet", "--concurrency", "2"])
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["user_model"]["format"] == "remote" for r in records)
    users = [m for r in records for m in r["messages"] if m["role"] == "user"]
    assert users and any(m["p_end"] is not None for m in users)


def test_a_different_vocabulary_is_refused(gguf_files, tmp_path, capsys):
    """A server with the Llama-3 vocabulary, and our tokenizer of 8,192 ids: one line, exit 2."""
    proc, url = start(str(gguf_files["f16"]))
    try:
        rc = cli.main(["simulate", "--user", url, "--user-tokenizer", str(TINY_USER), "--assistant", "tiny",
                       "--intents", str(intents(tmp_path)), "--out", str(tmp_path / "t.jsonl"), "--quiet"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "tokenizer differs" in err[0] or "vocabulary" in err[0], err


def test_retries_then_errors_are_recorded(served, tmp_path, capsys):
    flaky = Proxy(served, {1: 503, 2: "drop"})  # the first two turn requests fail, the retries pass
    try:
        out = tmp_path / "ok.jsonl"
        rc = cli.main(["simulate", "--user", flaky.url, "--user-tokenizer", str(TINY_USER), "--assistant", "tiny",
                       "--intents", str(intents(tmp_path)), "--max-turns", "2", "--retries", "2",
                       "--out", str(out), "--quiet"])
        assert rc == 0, capsys.readouterr().err
        assert all(json.loads(line)["error"] is None for line in out.read_text().splitlines())
    finally:
        flaky.close()
    dead = Proxy(served, {"all": 503})
    try:
        out = tmp_path / "err.jsonl"
        rc = cli.main(["simulate", "--user", dead.url, "--user-tokenizer", str(TINY_USER), "--assistant", "tiny",
                       "--intents", str(intents(tmp_path)), "--retries", "1", "--out", str(out), "--quiet"])
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert rc == 1 and len(records) == 2
        assert all(r["ended_by"] == "error" and "HTTP 503" in r["error"] for r in records)
    finally:
        dead.close()


def test_user_url_needs_a_tokenizer(tmp_path, capsys):
    rc = cli.main(["simulate", "--user", "http://127.0.0.1:9/v1", "--assistant", "tiny",
                   "--intents", str(intents(tmp_path)), "--out", str(tmp_path / "t.jsonl")])
    assert rc == 2 and "--user-tokenizer" in capsys.readouterr().err


def test_chat_with_a_served_user_model(served, tmp_path, capsys):
    replies = tmp_path / "replies.txt"
    replies.write_text("Sure, here is a plan.\nAnything else?\n")
    rc = cli.main(["chat", served + "/v1", "--user-tokenizer", str(TINY_USER), "--intent",
                   "You want to plan a trip to Kyoto.", "--assistant-file", str(replies), "--max-turns", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("user> ") >= 1


@pytest.mark.parametrize("plan, says", [
    ({"all": "huge"}, "the reply is larger than 8 MiB"),  # was read whole, however large
    ({"all": "deep"}, "nested too deeply"),                # was a RecursionError traceback
    ({"models": b"[]"}, None),                             # was an AttributeError traceback
    ({"models": b'{"data": 5}'}, None),                    # was a TypeError traceback
])
def test_a_hostile_user_server_is_an_error_record_or_one_line(plan, says, served, tmp_path, capsys):
    """Issue 29: the user model's answers are bounded and checked like the assistant's."""
    hostile = Proxy(served, plan)
    out = tmp_path / "t.jsonl"
    try:
        rc = cli.main(["simulate", "--user", hostile.url, "--user-tokenizer", str(TINY_USER), "--assistant",
                       "tiny", "--intents", str(intents(tmp_path)), "--max-turns", "2", "--retries", "0",
                       "--out", str(out), "--quiet"])
    finally:
        hostile.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    if says is None:
        assert rc == 0 and len(records) == 2, err
    else:
        assert rc == 1 and [r["ended_by"] for r in records] == ["error"] * 2, err
        assert all(says in r["error"] for r in records), records[0]["error"]
