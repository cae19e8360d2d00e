"""Hostile clients against ``userlm-local serve`` (issue 29): each abuse runs against the real server
on loopback, bounded in connections, requests and seconds, and each asserts that an unrelated
well-formed request (the official ``openai`` client, or ``/health``) is still answered within a
bound while the abuse goes on."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from serving import start_server  # noqa: E402

HI = [{"role": "user", "content": "Write a haiku about the sea."}]


def start(*argv: str, nofile: int | None = None) -> tuple[subprocess.Popen, int]:
    """``userlm-local serve`` on a free port; ``nofile`` lowers its descriptor limit (the 20,000 of the
    machine where the slowloris was found, scaled down to keep the test small)."""
    return start_server(*argv, nofile=nofile)


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.stderr.read()


def client(port: int, timeout: float = 60):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=timeout)


def health(port: int, timeout: float = 5) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
        return json.loads(r.read())


def timed(fn, bound: float):
    """``fn()``, asserted to return within ``bound`` seconds; (result, seconds)."""
    t0 = time.monotonic()
    out = fn()
    took = time.monotonic() - t0
    assert took < bound, f"took {took:.1f} s (bound {bound} s)"
    return out, took


def half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send the start of a request's headers and never finish them."""
    held = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:  # the server stopped accepting: what the test is about to find out
            break
        held.append(s)
    return held


def test_slowloris_cannot_starve_health_or_a_real_client():
    """Issue 29 finding 1: connections that never finish their headers stayed open until the
    process ran out of descriptors ('Too many open files') and /health timed out. Here 700 half-open
    connections against a server allowed 512 descriptors: the cap (256 by default) keeps it below
    its limit, /health and a chat completion are answered while they are held."""
    proc, port = start("tiny", "--max-tokens", "8", nofile=512)
    held = []
    try:
        held = half_open(port, 700)
        h, _ = timed(lambda: health(port), 5)
        assert h["status"] == "ok"
        r, _ = timed(lambda: client(port).chat.completions.create(model="tiny-assistant", messages=HI, max_tokens=4),
                     30)
        assert r.choices[0].message.content is not None
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds < 256 + 64, fds  # the cap, plus the model's and the runtime's own descriptors
        readable, _, _ = select.select(held, [], [], 1)
        assert len(readable) >= len(held) - 256  # the ones evicted to make room were closed
    finally:
        for s in held:
            s.close()
        log = stop(proc)
    assert "Too many open files" not in log, log[-2000:]


def test_header_and_idle_timeouts_close_connections_with_a_json_reply():
    proc, port = start("tiny", "--max-tokens", "8", "--header-timeout", "1", "--idle-timeout", "1")
    try:
        slow = half_open(port, 3)
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)  # a keep-alive connection, then silence
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        garbage = socket.create_connection(("127.0.0.1", port), timeout=10)
        garbage.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        t0 = time.monotonic()
        for s in slow:
            s.settimeout(10)
            head, _, body = s.recv(4096).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head, head
            assert "headers did not arrive" in json.loads(body)["error"]["message"]
        for s in (silent, kept):
            s.settimeout(10)
            data = s.recv(4096)
            while data and not data.endswith(b"}"):
                data += s.recv(4096)
            assert s.recv(4096) == b""  # closed
        assert time.monotonic() - t0 < 8
        head, _, body = garbage.recv(4096).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, head
        assert json.loads(body)["error"]["message"]
        assert health(port)["status"] == "ok"
    finally:
        stop(proc)


def _no_stops() -> dict[str, int]:
    """A logit_bias that keeps the bundled tiny assistant from ending its reply."""
    from userlm_local.defaults import tiny_assistant_model
    from userlm_local.runtime.backends import load_tokenizer

    tok = load_tokenizer(str(tiny_assistant_model()))
    ids = {tok.token_id(t) for t in ("<|eot_id|>", "<|end_of_text|>", tok.eos_token)} - {None}
    return {str(i): -100 for i in ids}


def test_a_giant_completions_request_is_refused_and_a_departed_client_stops_its_work():
    """Issue 29 finding 2: 'prompt': ['hi'] * 2000 was accepted and, after its client left, the
    server went on submitting its prompts (the cancelled counter climbing for minutes). Now
    prompts x n and the tokens a request may generate are capped (400 naming the field), and a
    client that leaves stops every choice not yet submitted: with one slot and 32 prompts, at most
    the one in flight is cancelled, and a well-formed request behind it is answered."""
    proc, port = start("tiny", "--max-tokens", "16", "--parallel", "1")
    try:
        c = client(port)
        for kwargs, param in (({"prompt": ["hi"] * 2000}, "prompt"),
                              ({"prompt": "hi", "n": 1, "max_tokens": 70_000}, "max_tokens"),
                              ({"prompt": ["hi"] * 16, "max_tokens": 4096}, "max_tokens")):
            with pytest.raises(openai.BadRequestError) as e:
                timed(lambda kw=kwargs: c.completions.create(model="tiny-assistant", **kw), 10)
            assert e.value.body["param"] == param, e.value.body
        impatient, outcome = client(port, timeout=1.5), []

        def leave():
            try:
                impatient.completions.create(model="tiny-assistant", prompt=["Once upon a time"] * 32,
                                             max_tokens=1000, logit_bias=_no_stops())
            except openai.APITimeoutError as exc:
                outcome.append(exc)

        abuse = threading.Thread(target=leave)
        abuse.start()
        time.sleep(0.5)  # the 32 prompts hold the one slot and queue behind it
        r, _ = timed(lambda: c.chat.completions.create(model="tiny-assistant", messages=HI, max_tokens=4), 30)
        assert r.choices[0].message.content is not None
        abuse.join(timeout=30)
        assert outcome, "the impatient client was answered within 1.5 s: the abuse did not run"
        time.sleep(1.0)
        h = health(port)
        assert h["active"] == 0 and h["cancelled"] <= 2, h  # not 32: nothing was submitted after it left
        time.sleep(1.0)
        assert health(port)["cancelled"] == h["cancelled"]
    finally:
        log = stop(proc)
    assert "Traceback" not in log, log[-2000:]


def post(port: int, path: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def test_tokenization_is_linear_and_a_giant_chat_is_refused_fast():
    """Issue 29 finding 3: llama.cpp's own cut at special-token strings is quadratic in their number
    ('<|im_start|>x' x 80,000 took 107 s on /tokenize, and blocked the event loop), and a
    100,000-message chat took 420 s to come back as a 400. The default assistant (SmolLM2 on
    llama.cpp): 80,000 of them in a bounded time while /health answers at once, the chat refused
    naming 'messages' in seconds, and a well-formed chat answered."""
    proc, port = start("--max-tokens", "8")
    try:
        c = client(port)
        name = c.models.list().data[0].id
        out: list = []
        worker = threading.Thread(target=lambda: out.append(timed(
            lambda: post(port, "/tokenize", {"prompt": "<|im_start|>x" * 80_000}), 30)))
        worker.start()
        time.sleep(0.3)
        while worker.is_alive():  # the event loop is not held by the tokenizer
            timed(lambda: health(port), 2)
            time.sleep(0.2)
        worker.join()
        (r, _), = out
        assert r["count"] == 160_000
        many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(100_001)]
        with pytest.raises(openai.BadRequestError) as e:
            timed(lambda: c.chat.completions.create(model=name, messages=many, max_tokens=4), 15)
        assert e.value.body["param"] == "messages", e.value.body
        r, _ = timed(lambda: c.chat.completions.create(model=name, messages=HI, max_tokens=4), 30)
        assert r.choices[0].message.content is not None
    finally:
        log = stop(proc)
    assert "Traceback" not in log, log[-2000:]


def test_the_linear_cut_tokenizes_as_llama_cpp_does(gguf_files):
    """The cut at special-token strings done here gives llama.cpp's own ids, on random texts of
    special strings, their fragments, text and spaces, parsed and plain (the tiny UserLM's GGUF and
    the default UserLM's SmolLM2 vocabulary)."""
    import random

    from userlm_local.defaults import resolve_user_model
    from userlm_local.runtime.backends import load_tokenizer

    rnd = random.Random(0)
    words = ["hello", " world", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|endconversation|>", "\n", "  ", "é",
             "<|start_header_id|>", "user", "<|", "|>", "<|im_start", "x", "\u00a0"]
    for path in (gguf_files["f16"], resolve_user_model("default")):
        tok = load_tokenizer(str(path))
        assert tok._specials is not None  # both are BPE vocabularies: the linear cut is the one used
        for _ in range(100):
            text = "".join(rnd.choice(words) for _ in range(rnd.randint(60, 200)))
            for parse in (True, False):
                assert tok._split_tokenize(text, parse) == tok._tokenize(text, parse), text


def test_clients_that_disconnect_never_fail_an_innocent_request(gguf_files):
    """Issue 29 finding 4: on serve --as user, a client that disconnected made an innocent
    concurrent request fail with 'all sequences of this llama.cpp context are in use' (its slot was
    given back by the cancelled future's callback while the engine still held the sequence). Three
    clients open streams and leave after two chunks, over and over, while an innocent client asks
    for turns, whole and streamed: every innocent request is answered within a bound."""
    from userlm_local.runtime.backends import load_tokenizer

    path = str(gguf_files["f16"])
    tok = load_tokenizer(path)
    no_end = {str(tok.token_id(t)): -100 for t in ("<|eot_id|>", "<|endconversation|>")}
    intent = [{"role": "system", "content": "You are a user chatting with an assistant language model to plan a trip."}]
    proc, port = start(path, "--as", "user", "--max-tokens", "1000", "--parallel", "2")
    stop_abuse = threading.Event()
    left = [0]

    def leave_early():
        c = client(port)
        while not stop_abuse.is_set():
            try:
                stream = c.chat.completions.create(model="default", messages=intent, max_tokens=1000, stream=True,
                                                   logit_bias=no_end)
                for i, _ in enumerate(stream):
                    if i == 2:
                        break
                stream.close()
                left[0] += 1
            except openai.APIError:
                pass  # the abuser's own fate does not matter here

    abusers = [threading.Thread(target=leave_early) for _ in range(3)]
    try:
        for t in abusers:
            t.start()
        c = client(port)
        for k in range(8):
            if k % 2:
                r, _ = timed(lambda: c.chat.completions.create(model="default", messages=intent, max_tokens=4), 60)
                assert r.choices[0].message.role == "user" and r.usage.completion_tokens >= 1
            else:
                chunks, _ = timed(lambda: list(c.chat.completions.create(model="default", messages=intent,
                                                                          max_tokens=4, stream=True)), 60)
                assert chunks[-1].choices[0].finish_reason in ("stop", "length", "end_conversation")
        assert left[0] >= 6  # the abuse really ran alongside
    finally:
        stop_abuse.set()
        for t in abusers:
            t.join(timeout=60)
        log = stop(proc)
    assert "in use" not in log and "Traceback" not in log, log[-2000:]


@pytest.mark.parametrize("option,value", [("--header-timeout", "0"), ("--idle-timeout", "nan"),
                                          ("--max-connections", "0"), ("--max-choices", "-1"),
                                          ("--max-request-tokens", "0")])
def test_a_bad_limit_is_one_line_and_exit_2(option, value):
    r = subprocess.run([sys.executable, "-m", "userlm_local.cli", "serve", "tiny", "--port", "0", option, value],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and option in r.stderr, r.stderr


def test_when_every_connection_has_a_request_in_flight_a_new_one_is_a_503():
    """The connection cap's other side: eight connections each waiting on a long generation fill a
    cap of 8, and a ninth is refused with a 503 JSON at once (not held, not left to time out); once
    they leave, the server answers again."""
    proc, port = start("tiny", "--max-tokens", "1000", "--parallel", "1", "--max-connections", "8")
    busy = []
    try:
        body = json.dumps({"model": "default", "messages": HI, "max_tokens": 1000, "stream": True,
                           "logit_bias": _no_stops()}).encode()
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            busy.append(s)
        time.sleep(1.0)
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        late.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, reply = late.recv(4096).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and json.loads(reply)["error"]["type"] == "server_busy", head
        for s in busy:
            s.close()
        busy = []
        deadline = time.monotonic() + 30
        while True:
            try:
                assert health(port)["status"] == "ok"
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        for s in busy:
            s.close()
        stop(proc)


def test_a_template_that_fails_or_runs_away_on_some_messages_is_a_400(tmp_path):
    """A chat template that fails with something other than a TemplateError (str + int) was a
    plain-text 500; one that loops on some messages pinned the server. Both are a 400 JSON naming
    'messages' (the loop within the render budget), a well-formed request beside them is answered,
    and /health stays responsive meanwhile."""
    import shutil

    from userlm_local.defaults import tiny_assistant_model

    d = tmp_path / "asst"
    shutil.copytree(tiny_assistant_model(), d)
    original = (d / "chat_template.jinja").read_text()
    (d / "chat_template.jinja").write_text(
        "{% if messages[0].content == 'boom' %}{{ messages[0].content + 1 }}{% endif %}"
        "{% if messages[0].content == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% endfor %}{% endfor %}{% endif %}" + original)
    proc, port = start(str(d), "--max-tokens", "4")
    try:
        c = client(port)
        for word in ("boom", "loop"):
            out: list = []

            def send(word=word, out=out):
                try:
                    c.chat.completions.create(model="default", messages=[{"role": "user", "content": word}])
                except openai.BadRequestError as refused:
                    out.append(refused)

            worker = threading.Thread(target=send)
            worker.start()
            r, _ = timed(lambda: c.chat.completions.create(model="default", messages=HI, max_tokens=2), 30)
            assert r.choices[0].message.content is not None
            while worker.is_alive():
                timed(lambda: health(port), 2)
                time.sleep(0.2)
            (exc,) = out
            assert exc.body["param"] == "messages" and "template" in exc.body["message"], exc.body
    finally:
        log = stop(proc)
    assert "Traceback" not in log, log[-2000:]
