"""``userlm-local serve`` driven by the official ``openai`` client (and raw HTTP where a client
would not send such a thing): usage, finish reasons, stop strings, n, seed, logprobs, streaming,
400s naming the field, read timeouts, cancellation on disconnect, concurrent requests batched."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest
from serving import start_server, stop_server

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")


start, stop = start_server, stop_server


@pytest.fixture(scope="module")
def assistant():
    """The bundled tiny assistant (torch)."""
    proc, port = start("tiny", "--max-tokens", "16", "--read-timeout", "2")
    yield port
    stop(proc)


@pytest.fixture(scope="module")
def userlm(gguf_files):
    """The tiny UserLM fixture as a GGUF (llama.cpp: concurrent requests share one batch)."""
    proc, port = start(str(gguf_files["f16"]), "--max-tokens", "12", "--parallel", "4")
    yield port
    stop(proc)


def client(port: int):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.loads(r.read())


HI = [{"role": "user", "content": "Write a haiku about the sea."}]


def test_models_and_a_chat_completion(assistant):
    c = client(assistant)
    (model,) = c.models.list().data
    assert model.id == "tiny-assistant" and model.created > 0
    r = c.chat.completions.create(model=model.id, messages=HI, max_tokens=5, temperature=0)
    ch = r.choices[0]
    assert ch.message.role == "assistant" and ch.message.content
    assert ch.finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    again = c.chat.completions.create(model="tiny-assistant", messages=HI, max_completion_tokens=5, temperature=0)
    assert again.choices[0].message.content == ch.message.content  # greedy; max_completion_tokens honoured


def test_seed_n_and_defaults(assistant):
    c = client(assistant)
    a = c.chat.completions.create(model="default", messages=HI, n=3, seed=7, max_tokens=12)
    b = c.chat.completions.create(model="default", messages=HI, n=3, seed=7, max_tokens=12)
    assert [x.index for x in a.choices] == [0, 1, 2]
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert len({x.message.content for x in a.choices}) > 1  # temperature defaults to 1: the choices differ
    assert a.usage.completion_tokens >= 12 * sum(x.finish_reason == "length" for x in a.choices)


def test_streaming_matches_the_whole_reply_and_reports_usage(assistant):
    c = client(assistant)
    whole = c.chat.completions.create(model="default", messages=HI, max_tokens=10, temperature=0)
    chunks = list(c.chat.completions.create(model="default", messages=HI, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3  # token by token


def test_stop_strings_cut_the_reply(assistant):
    c = client(assistant)
    full = c.chat.completions.create(model="default", messages=HI, max_tokens=16, temperature=0).choices[0].message.content
    stop_at = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop_at) == 3
    cut = full[:full.index(stop_at)]
    r = c.chat.completions.create(model="default", messages=HI, max_tokens=16, temperature=0, stop=[stop_at, "@@@@"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    streamed = c.chat.completions.create(model="default", messages=HI, max_tokens=16, temperature=0, stop=stop_at,
                                         stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == cut


def test_logprobs(assistant):
    c = client(assistant)
    r = c.chat.completions.create(model="default", messages=HI, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for tok in content:
        tops = [t.logprob for t in tok.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert tok.token == tok.top_logprobs[0].token and tok.logprob == pytest.approx(tops[0])  # greedy
    t = c.completions.create(model="default", prompt="The sea is", max_tokens=4, temperature=0, logprobs=2)
    assert len(t.choices[0].logprobs.tokens) == 4 and len(t.choices[0].logprobs.top_logprobs[0]) == 2
    streamed = [x.choices[0].logprobs for x in c.completions.create(
        model="default", prompt="The sea is", max_tokens=4, temperature=0, logprobs=2, stream=True)
        if x.choices and x.choices[0].logprobs]
    assert [o for lp in streamed for o in lp.text_offset] == t.choices[0].logprobs.text_offset
    assert [tok for lp in streamed for tok in lp.tokens] == t.choices[0].logprobs.tokens


def test_completions_take_text_or_token_ids(assistant):
    c = client(assistant)
    by_text = c.completions.create(model="default", prompt="Once upon a time", max_tokens=8, temperature=0)
    ids = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{assistant}/v1/completions", method="POST",
        data=json.dumps({"prompt": "Once upon a time", "max_tokens": 1, "echo": True}).encode()), timeout=30).read())
    assert ids["choices"][0]["text"].startswith("Once upon a time")
    two = c.completions.create(model="default", prompt=["Once upon a time", "The sea is"], max_tokens=8, temperature=0)
    assert [x.index for x in two.choices] == [0, 1]
    assert two.choices[0].text == by_text.choices[0].text
    assert by_text.usage.prompt_tokens > 0


def test_system_messages_are_honoured(assistant):
    c = client(assistant)
    plain = c.chat.completions.create(model="default", messages=HI, max_tokens=1, temperature=0)
    sys_ = c.chat.completions.create(model="default", messages=[{"role": "system", "content": "Reply only in German."}] + HI,
                                     max_tokens=1, temperature=0)
    assert sys_.usage.prompt_tokens > plain.usage.prompt_tokens + 4


@pytest.mark.parametrize("field,value", [("temperature", "abc"), ("temperature", 3), ("top_p", 0), ("seed", "abc"),
                                         ("n", 0), ("max_tokens", -5), ("max_tokens", 0), ("stop", ["a"] * 5),
                                         ("logit_bias", {"x": 1}), ("top_logprobs", 3), ("tools", [{"type": "f"}]),
                                         ("temprature", 1), ("presence_penalty", 0.5), ("frequency_penalty", 5),
                                         ("reasoning_effort", "high"), ("user", 5)])
def test_a_bad_field_is_a_400_naming_it(assistant, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client(assistant).chat.completions.create(model="default", messages=HI, extra_body={field: value})
    assert e.value.body["param"] == field, e.value.body


@pytest.mark.parametrize("body,param", [([1, 2], None), ({"messages": [{"content": "hi"}]}, "messages[0].role"),
                                        ({"messages": "hi"}, "messages"), (b"{not json", None),
                                        ({"messages": [{"role": "user", "content": "x " * 400_000}]}, "messages"),
                                        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', None),
                                        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None)])
def test_bad_bodies_are_400s(assistant, body, param):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{assistant}/v1/chat/completions", data=data, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 400
    err = json.loads(e.value.read())["error"]
    assert err["param"] == param and err["message"], err
    assert health(assistant)["status"] == "ok"  # the server is still up


def test_neutral_values_of_unsupported_options_are_accepted(assistant):
    c = client(assistant)
    r = c.chat.completions.create(model="default", messages=HI, max_tokens=2, presence_penalty=0, frequency_penalty=0,
                                  user="someone")
    assert r.choices[0].message.content is not None
    t = c.completions.create(model="default", prompt="The sea", max_tokens=2, best_of=1, suffix="")
    assert t.choices[0].text is not None
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="default", prompt="The sea", max_tokens=2, best_of=3)
    assert e.value.body["param"] == "best_of"
    assert c.models.retrieve(c.models.list().data[0].id).object == "model"


def test_a_chunked_body_over_the_limit_is_413(assistant):
    with socket.create_connection(("127.0.0.1", assistant), timeout=60) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(40):  # 40 MiB, over the 16 MiB limit: refused before it is all read
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert health(assistant)["status"] == "ok"


def test_a_body_shorter_than_its_length_times_out(assistant):
    with socket.create_connection(("127.0.0.1", assistant), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"messa")
        t0 = time.monotonic()
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and time.monotonic() - t0 < 15, reply


def _no_stops() -> dict[str, int]:
    """A logit_bias that keeps the bundled tiny assistant from ending its reply."""
    from userlm_local.runtime.backends import load_tokenizer
    from userlm_local.defaults import tiny_assistant_model

    tok = load_tokenizer(str(tiny_assistant_model()))
    ids = {tok.token_id(t) for t in ("<|eot_id|>", "<|end_of_text|>", tok.eos_token)} - {None}
    assert ids
    return {str(i): -100 for i in ids}


def test_a_client_that_goes_away_cancels_its_generation(assistant):
    before = health(assistant)["cancelled"]
    stream = client(assistant).chat.completions.create(model="default", messages=HI, max_tokens=1500, stream=True,
                                                      logit_bias=_no_stops())
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        h = health(assistant)
        if h["cancelled"] > before and h["active"] == 0:
            break
        time.sleep(0.2)
    assert h["cancelled"] > before and h["active"] == 0, h


def test_the_server_keeps_serving_after_clients_go_away():
    """A client gone mid-stream or mid-request: its generation stops, the engine goes on serving
    the next request, and the log has no traceback."""
    proc, port = start("tiny", "--max-tokens", "16")
    try:
        stream = client(port).chat.completions.create(model="default", messages=HI, max_tokens=1500, stream=True,
                                                      logit_bias=_no_stops())
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        impatient = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):  # its stop tokens banned: 1500 tokens outlast 0.5 s anywhere
            impatient.chat.completions.create(model="default", messages=HI, max_tokens=1500, logit_bias=_no_stops())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (health(port)["cancelled"] == 2 and health(port)["active"] == 0):
            time.sleep(0.2)
        assert health(port)["cancelled"] == 2 and health(port)["active"] == 0, health(port)
        after = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        r = after.chat.completions.create(model="default", messages=HI, max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
    finally:
        stop(proc)
    log = proc.stderr.read()
    assert "Traceback" not in log and "Exception" not in log, log


def test_user_mode_batches_concurrent_requests_and_ends_conversations(userlm, gguf_files):
    c = client(userlm)
    convo = [{"role": "system", "content": "You want a recipe for bread."},
             {"role": "user", "content": "How do I bake bread?"},
             {"role": "assistant", "content": "Mix flour, water, yeast and salt, then knead."}]
    results = [None] * 4

    def ask(i):
        results[i] = c.chat.completions.create(model="default", messages=convo, max_tokens=12, seed=i)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for r in results:
        assert r.choices[0].message.role == "user"
        assert r.choices[0].finish_reason in ("stop", "length", "end_conversation")
    assert health(userlm)["scheduler_max_batch"] > 1  # the four shared engine rounds
    with pytest.raises(openai.BadRequestError):  # the user does not answer a user
        c.chat.completions.create(model="default", messages=convo[:2])


def test_user_mode_end_conversation(userlm, gguf_files):
    from userlm_local.runtime.backends import load_tokenizer

    end_id = load_tokenizer(str(gguf_files["f16"])).token_id("<|endconversation|>")
    c = client(userlm)
    convo = [{"role": "system", "content": "You want a recipe for bread."}]
    r = c.chat.completions.create(model="default", messages=convo, max_tokens=8, logit_bias={str(end_id): 100})
    assert r.choices[0].finish_reason == "end_conversation"  # the biased end token, sampled at once
    assert r.choices[0].message.content == "<|endconversation|>"
    t = c.completions.create(model="default", prompt=[end_id], max_tokens=1, temperature=0)
    assert t.usage.prompt_tokens == 1  # token-id prompts are taken as they are


def test_a_client_leaving_never_makes_the_next_request_fail(gguf_files):
    """Issue 29 finding 4: the cancelled request's slot was given back by its future's callback
    while the engine still held its llama.cpp sequence, and the next request was refused ("all
    sequences of this llama.cpp context are in use"). With one slot, a client that leaves mid-stream
    and an innocent request right behind it, eight times: every innocent request is answered."""
    from userlm_local.runtime.backends import load_tokenizer

    path = str(gguf_files["f16"])
    tok = load_tokenizer(path)
    no_end = {str(tok.token_id(t)): -100 for t in ("<|eot_id|>", "<|endconversation|>")}
    intent = [{"role": "system", "content": "You are a user chatting with an assistant language model to plan a trip."}]
    proc, port = start(path, "--max-tokens", "2000", "--parallel", "1", "--n-ctx", "4096")
    try:
        c = client(port)
        for _ in range(8):
            stream = c.chat.completions.create(model="default", messages=intent, max_tokens=2000, stream=True,
                                               logit_bias=no_end)
            answers: list = []
            innocent = threading.Thread(target=lambda: answers.append(
                c.chat.completions.create(model="default", messages=intent, max_tokens=4)))
            for i, _ in enumerate(stream):
                if i == 2:
                    innocent.start()  # waits for the one slot, which the stream holds
                    time.sleep(0.3)
                    break
            stream.close()
            innocent.join(timeout=60)
            (r,) = answers
            assert r.choices[0].message.role == "user" and r.usage.completion_tokens >= 1
    finally:
        stop(proc)
    log = proc.stderr.read()
    assert "in use" not in log and "Traceback" not in log, log


# A tau2-bench-shaped request: its user simulator sends the simulation guidelines and the task's
# scenario as the system prompt, then the conversation with roles flipped (the agent's turns as
# 'user', the simulated user's own as 'assistant'), and ends a run on '###STOP###'.
TAU2_SYSTEM = ("# User Simulation Guidelines\nYou are playing the role of a customer contacting a customer service "
               "representative. Generate one message at a time. If the instruction goal is satisfied, generate the "
               "'###STOP###' token to end the conversation.\n\n<scenario>\nYou want to change your flight from "
               "Boston to Denver to next Tuesday. Your user id is mia_li_3668.\n</scenario>")


@pytest.fixture(scope="module")
def flipped_user(gguf_files):
    proc, port = start(str(gguf_files["f16"]), "--as", "user", "--roles", "flipped", "--max-tokens", "12")
    yield port
    stop(proc)


def test_flipped_roles_answer_in_the_assistant_slot_and_stop_with_the_harness_marker(flipped_user, gguf_files):
    from userlm_local.runtime.backends import load_tokenizer

    c = client(flipped_user)
    first = [{"role": "system", "content": TAU2_SYSTEM}, {"role": "user", "content": "Hi! How can I help you today?"}]
    r = c.chat.completions.create(model="default", messages=first, seed=1)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content.strip()  # the slot tau2 reads; never empty
    later = first + [{"role": "assistant", "content": msg.content},
                     {"role": "user", "content": "Sure, can I have your user id and the reservation number?"}]
    assert c.chat.completions.create(model="default", messages=later, seed=1).choices[0].message.content.strip()
    end_id = load_tokenizer(str(gguf_files["f16"])).token_id("<|endconversation|>")
    ended = c.chat.completions.create(model="default", messages=later, logit_bias={str(end_id): 100})
    assert ended.choices[0].finish_reason == "end_conversation"
    assert "###STOP###" in ended.choices[0].message.content  # what tau2 looks for
    stream = c.chat.completions.create(model="default", messages=later, logit_bias={str(end_id): 100}, stream=True)
    assert "###STOP###" in "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    for bad, field in ((first[1:], "messages"),  # no system prompt: no intent
                       (later[:3], "messages")):  # un-flipped it ends on the user's own turn
        with pytest.raises(openai.BadRequestError) as exc:
            c.chat.completions.create(model="default", messages=bad)
        assert field in str(exc.value)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        c.chat.completions.create(model="default", messages=first, n=2)


def test_serve_as_user_without_a_model_serves_the_default_userlm():
    proc, port = start("--as", "user", "--max-tokens", "8")
    try:
        h = health(port)
        assert h["role"] == "user"
        models = client(port).models.list()
        assert [m.id for m in models.data][0].startswith("smollm2-userlm")
    finally:
        stop(proc)


def test_an_unknown_model_is_a_404_as_get_models_says(assistant):
    """Issue 29 (low): any 'model' was answered ('gpt-4o' by the tiny assistant) while GET
    /v1/models/gpt-4o was a 404. Now both are the same 404 naming 'model'; the served name, the name
    serve was given ('tiny') and 'default' are this model."""
    c = client(assistant)
    with pytest.raises(openai.NotFoundError) as chat:
        c.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2)
    with pytest.raises(openai.NotFoundError) as text:
        c.completions.create(model="gpt-4o", prompt="The sea", max_tokens=2)
    with pytest.raises(openai.NotFoundError) as get:
        c.models.retrieve("gpt-4o")
    assert chat.value.body == text.value.body == get.value.body
    assert chat.value.body["param"] == "model" and chat.value.body["code"] == "model_not_found"
    for name in ("tiny-assistant", "tiny", "default"):
        assert c.models.retrieve(name).id == "tiny-assistant"
        assert c.chat.completions.create(model=name, messages=HI, max_tokens=2).model == "tiny-assistant"


def test_errors_speak_of_messages_not_of_python_methods(userlm):
    """Issue 29 (low): two user messages in a row were refused with 'next_turn() first' or
    'add_assistant(reply) first', names of our Python API; a request is told in its own terms."""
    with pytest.raises(openai.BadRequestError) as e:
        client(userlm).chat.completions.create(model="default", max_tokens=2, messages=[
            {"role": "system", "content": "You want bread."}, {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Yes?"}])
    msg = e.value.body["message"]
    assert e.value.body["param"] == "messages" and "alternate" in msg and "()" not in msg, msg
