"""Campaigns end to end: a real HTTP assistant with injected faults, kill + resume, determinism."""

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from serving import (
    FixtureHandler,
    fixture_server,
    start_fixture_server,
    stop_fixture_server,
)

from userlm_local.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INTENTS = [
    "You are a user chatting with an assistant language model to plan a week of cheap vegetarian dinners.",
    "You are a user chatting with an assistant language model to understand how vaccines train the immune system.",
    "You are a user chatting with an assistant language model to write a polite email asking for a deadline extension.",
    "You are a user chatting with an assistant language model to debug a Python script that reads a CSV file.",
    "You are a user chatting with an assistant language model to pick a beginner telescope.",
    "You are a user chatting with an assistant language model to learn the rules of chess castling.",
]


@pytest.fixture
def intents_file(tmp_path):
    p = tmp_path / "intents.jsonl"
    p.write_text("".join(json.dumps({"id": f"i{n}", "intent": t}) + "\n" for n, t in enumerate(INTENTS)))
    return p


def records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def stable(recs):
    """What must be identical across runs: everything but wall-clock time."""
    out = []
    for r in sorted(recs, key=lambda r: r["id"]):
        r = dict(r)
        r["usage"] = {k: v for k, v in r["usage"].items() if not k.endswith("seconds")}
        if isinstance(r["usage"].get("assistant"), dict):
            r["usage"]["assistant"] = {k: v for k, v in r["usage"]["assistant"].items() if not k.endswith("seconds")}
        out.append(r)
    return out


def simulate(*args):
    return main(["simulate", "--quiet", *map(str, args)])


def scripted(user, intents_file, out, *args):
    """``simulate`` with the scripted garden assistant (short, fast campaigns)."""
    return simulate("--user", user, "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}",
                    "--intents", intents_file, "--out", out, *args)


# -- a real server, and a proxy in front of it that injects faults ---------------------------

@pytest.fixture(scope="module")
def server():
    """``userlm-local serve tiny``: the bundled tiny assistant, on a free port."""
    proc = subprocess.Popen([sys.executable, "-m", "userlm_local.cli", "serve", "tiny", "--port", "0", "--max-tokens", "24"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
    assert m, line
    yield f"http://127.0.0.1:{m.group(1)}"
    proc.terminate()
    proc.wait(timeout=20)


class FaultProxy:
    """Forwards to the real server; the n-th chat request (1-based) gets the fault planned for it."""

    def __init__(self, upstream: str, plan: dict):
        self.upstream, self.plan, self.seen = upstream, plan, 0
        proxy = self

        class Handler(FixtureHandler):
            def _forward(self, body=None):
                req = urllib.request.Request(proxy.upstream + self.path, data=body,
                                             headers={"Content-Type": "application/json"},
                                             method="POST" if body is not None else "GET")
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.headers.get("Content-Type"), r.read()

            def _send(self, status, ctype, data):
                self.send_body(data, status, ctype)

            def do_GET(self):
                if proxy.plan.get("models") == 401:
                    return self._send(401, "application/json", b'{"error": "bad key"}')
                self._send(*self._forward())

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen += 1
                fault = proxy.plan.get(proxy.seen)
                if fault == 500:
                    return self._send(500, "application/json", b'{"error": "boom"}')
                if fault == "timeout":
                    time.sleep(9)
                    return self._send(500, "application/json", b'{"error": "late"}')
                status, ctype, data = self._forward(body)
                if fault == "drop":  # half the stream, then the connection dies
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._send(status, ctype, data)

        self.httpd, self.url = start_fixture_server(Handler)

    def close(self):
        stop_fixture_server(self.httpd)


def test_http_assistant_with_faults(server, tiny_model, intents_file, tmp_path, capsys):
    # 3 conversations x up to 3 assistant turns; with --retries 1 each call may be tried twice.
    plan = {1: 500, 2: 500,            # conversation 1, first reply: two 500s -> error
            3: "timeout", 4: "drop",   # conversation 2, first reply: timeout, then dropped stream -> error
            6: "drop"}                 # conversation 3 (or 2's later turn): one drop, the retry succeeds
    proxy = FaultProxy(server, plan)
    out = tmp_path / "t.jsonl"
    try:
        rc = simulate("--user", tiny_model, "--assistant", proxy.url, "--intents", intents_file, "--limit", 3,
                      "--max-turns", 3, "--max-new-tokens", 6, "--stream", "--retries", 1, "--timeout", 6,
                      "--assistant-max-tokens", 24, "--out", out)
    finally:
        proxy.close()
    assert rc == 1  # conversations ended in error: not a success
    recs = records(out)
    assert sorted(r["intent_id"] for r in recs) == ["i0", "i1", "i2"]
    by = {r["intent_id"]: r for r in recs}
    assert by["i0"]["ended_by"] == "error" and "HTTP 500; HTTP 500" in by["i0"]["error"]
    assert by["i1"]["ended_by"] == "error" and "timeout" in by["i1"]["error"]
    assert "stream cut mid-event" in by["i1"]["error"]
    assert by["i2"]["ended_by"] == "max_turns" and by["i2"]["error"] is None
    assert [m["role"] for m in by["i2"]["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert by["i2"]["assistant"]["kind"] == "http"
    u = by["i2"]["usage"]["assistant"]  # streamed: the server's usage chunk, summed over the 2 replies
    assert u["prompt_tokens"] > 0 and 2 <= u["completion_tokens"] <= 2 * 24 and u["cached_tokens"] is None
    captured = capsys.readouterr()
    assert "ended by: error 2, max_turns 1" in captured.out
    assert "2 of 3 conversations ended in error; rerun them with --resume --retry-errors" in captured.err
    # a plain resume has nothing to do; --retry-errors reruns the two (the server is healthy now)
    assert simulate("--user", tiny_model, "--assistant", server, "--intents", intents_file, "--limit", 3,
                    "--max-turns", 3, "--max-new-tokens", 6, "--out", out, "--resume") == 0
    assert len(records(out)) == 3
    assert simulate("--user", tiny_model, "--assistant", server, "--intents", intents_file, "--limit", 3,
                    "--max-turns", 3, "--max-new-tokens", 6, "--out", out, "--resume", "--retry-errors") == 0
    after = records(out)
    assert sorted(r["intent_id"] for r in after) == ["i0", "i1", "i2"]  # once each
    assert all(r["ended_by"] != "error" for r in after)
    assert all(r["usage"]["assistant"]["completion_tokens"] > 0 for r in after)  # not streamed: from each reply
    assert by["i2"] in after  # the good record was kept as it was
    assert "removed 2 error records" in capsys.readouterr().err


def test_bad_endpoints_fail_before_any_work(server, tiny_model, intents_file, tmp_path, capsys):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    out = tmp_path / "t.jsonl"
    assert simulate("--user", tiny_model, "--assistant", f"http://127.0.0.1:{port}", "--intents", intents_file,
                    "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the endpoint" in err and len(err.splitlines()) == 1
    proxy = FaultProxy(server, {"models": 401})
    try:
        assert simulate("--user", tiny_model, "--assistant", proxy.url, "--intents", intents_file, "--out", out) == 2
    finally:
        proxy.close()
    assert "API key was rejected (HTTP 401)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--max-turns", "0"], "--max-turns must be at least 1"),
    (["--intents", "nosuchset"], "not a built-in set"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--ray", "--ray-actors", "-1"], "--ray-actors must be at least 1"),  # was accepted: no actor, a hang
    (["--ray-actors", "2"], "--ray-actors goes with --ray"),
    (["--max-new-tokens", "1"], "--max-new-tokens must be at least 2"),  # 1 was always an empty turn
    (["--assistant-temperature", "-1"], "--assistant-temperature must be a number >= 0"),
    (["--assistant-temperature", "nan"], "--assistant-temperature must be a number >= 0"),
    (["--assistant-top-p", "0"], "--assistant-top-p must be in (0, 1]"),
    (["--assistant-top-p", "1.5"], "--assistant-top-p must be in (0, 1]"),
    (["--assistant-repeat-penalty", "0.9"], "--assistant-repeat-penalty must be a number >= 1"),
    (["--assistant-repeat-penalty", "inf"], "--assistant-repeat-penalty must be a number >= 1"),
    (["--assistant-top-p", "0.9"], "--assistant-top-p and --assistant-repeat-penalty are for a local assistant"),
])
def test_bad_arguments(argv, needle, tiny_model, tmp_path, capsys):
    assert simulate("--user", tiny_model, "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}",
                    "--out", tmp_path / "t.jsonl", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_malformed_intents_file(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "intent": "You are a user who wants x."}\n{"id": "b", "intent": \n')
    assert simulate("--user", tiny_model, "--intents", bad, "--out", tmp_path / "t.jsonl") == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err


def test_same_seed_same_transcripts_and_concurrency_does_not_matter(tiny_model, intents_file, tmp_path):
    script = f"script:{EXAMPLES / 'garden-replies.txt'}"
    common = ["--user", tiny_model, "--assistant", script, "--intents", intents_file, "--trials", 2,
              "--max-turns", 3, "--max-new-tokens", 6, "--seed", 11]
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    assert simulate(*common, "--out", a) == 0
    assert simulate(*common, "--out", b) == 0
    assert simulate(*common, "--concurrency", 4, "--out", c) == 0
    ra, rb, rc = records(a), records(b), records(c)
    assert len(ra) == 12
    assert stable(ra) == stable(rb)
    assert stable(ra) == stable(rc)  # torch: bit-identical whatever ran beside each conversation
    assert len({json.dumps(r["messages"]) for r in ra}) == 12  # trials and intents differ
    assert all(r["usage"]["assistant"] is None for r in ra)  # a script costs no tokens


def test_sigkill_then_resume_keeps_every_key_once(tiny_model, intents_file, tmp_path):
    out = tmp_path / "t.jsonl"
    argv = [sys.executable, "-m", "userlm_local.cli", "simulate", "--quiet", "--user", str(tiny_model),
            "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}", "--intents", str(intents_file),
            "--trials", "2", "--max-turns", "4", "--max-new-tokens", "8", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_with = out.read_text().count("\n")
    assert 2 <= killed_with < 12
    with open(out, "ab") as f:  # a torn line, as a kill in the middle of a write would leave
        f.write(b'{"id": "i9/0/0", "intent_id": "i9", "tri')
    r = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = records(out)  # every line is valid JSON
    keys = [(x["intent_id"], x["trial"], x["seed"]) for x in recs]
    assert len(keys) == len(set(keys)) == 12
    assert f"({killed_with} already done)" in r.stdout


def signalled_campaign(tiny_model, intents_file, out, sig, wait: float) -> tuple[int, str]:
    """A campaign of 1,200 conversations (far more than can finish before the signal), sent ``sig``
    once its first record is on disk: its exit code and stderr."""
    argv = [sys.executable, "-m", "userlm_local.cli", "simulate", "--quiet", "--user", str(tiny_model),
            "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}", "--intents", str(intents_file),
            "--trials", "200", "--max-turns", "6", "--max-new-tokens", "16", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
        time.sleep(0.2)
    assert out.exists(), "no conversation finished within 240 s"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert "rerun with --resume" in err and "Traceback" not in err, err[-2000:]
    assert all(json.loads(line) for line in out.read_text().splitlines())
    return proc.returncode, err


def test_sigterm_exits_at_once_and_keeps_the_records(tiny_model, intents_file, tmp_path):
    """``kill``: as a second Ctrl-C, the campaign leaves at once; what finished is on disk and the
    lock file is gone."""
    rc, err = signalled_campaign(tiny_model, intents_file, tmp_path / "t.jsonl", signal.SIGTERM, 60)
    assert rc == 143 and "terminated:" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no lock file left


def test_sigint_stops_cleanly(tiny_model, intents_file, tmp_path):
    rc, _ = signalled_campaign(tiny_model, intents_file, tmp_path / "t.jsonl", signal.SIGINT, 180)
    assert rc == 130


def test_a_second_campaign_on_the_same_out_is_refused_before_loading(tiny_model, intents_file, tmp_path, capsys):
    """Two writers: the lock is held for the whole run; the second one (--resume too) gets one line,
    exit 2, and the first one's file is untouched."""
    from userlm_local.simulation.transcripts import TranscriptWriter

    out = tmp_path / "t.jsonl"
    script = f"script:{EXAMPLES / 'garden-replies.txt'}"
    assert simulate("--user", tiny_model, "--assistant", script, "--intents", intents_file, "--limit", 2,
                    "--max-turns", 2, "--max-new-tokens", 6, "--out", out) == 0
    before = out.read_bytes()
    with TranscriptWriter.open(out, "resume") as held:  # another campaign, mid-run
        assert len(held.done) == 2
        for extra in ([], ["--resume"], ["--overwrite"]):
            rc = simulate("--user", tmp_path / "no-such-model", "--assistant", script, "--intents", intents_file,
                          "--out", out, *extra)
            err = capsys.readouterr().err.strip()
            assert rc == 2 and "another campaign is writing this file" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == before
    # resumed runs append: the first two records stay byte for byte, nothing is duplicated
    assert simulate("--user", tiny_model, "--assistant", script, "--intents", intents_file, "--limit", 4,
                    "--max-turns", 2, "--max-new-tokens", 6, "--out", out, "--resume") == 0
    after = out.read_bytes()
    assert after.startswith(before)
    keys = [(r["intent_id"], r["trial"], r["seed"]) for r in records(out)]
    assert len(keys) == 4 == len(set(keys))
    assert not (tmp_path / ".t.jsonl.lock").exists()  # released and removed


def test_two_simulate_processes_at_once_one_is_refused(tiny_model, intents_file, tmp_path):
    out = tmp_path / "t.jsonl"
    cmd = [sys.executable, "-m", "userlm_local.cli", "simulate", "--quiet", "--user", str(tiny_model),
           "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}", "--intents", str(intents_file),
           "--max-turns", "3", "--max-new-tokens", "8", "--out", str(out)]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--resume"])]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "another campaign is writing this file" in refused
    recs = records(out)
    keys = [(r["intent_id"], r["trial"], r["seed"]) for r in recs]
    assert len(keys) == len(INTENTS) == len(set(keys))


def test_a_strict_endpoint_without_stream_options_still_streams():
    """--stream asks for the usage chunk (stream_options); an endpoint that refuses the unknown field
    with a 400 gets the request again without it, and later requests do not send it."""
    from userlm_local.assistants.openai_http import OpenAIAssistant

    bodies = []

    class Strict(FixtureHandler):
        protocol_version = "HTTP/1.0"  # as before: one answer per connection

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            if "stream_options" in body:
                data, status, ctype = b'{"error": {"message": "unknown field stream_options"}}', 400, "application/json"
            else:
                event = json.dumps({"choices": [{"delta": {"content": "Hello there."}}]})
                data, status, ctype = f"data: {event}\n\ndata: [DONE]\n\n".encode(), 200, "text/event-stream"
            self.send_body(data, status, ctype)

    with fixture_server(Strict) as url:
        a = OpenAIAssistant(f"{url}/v1", model="m", retries=0, stream=True)
        assert a.reply([{"role": "user", "content": "hi"}], key=1) == "Hello there."
        assert a.reply([{"role": "user", "content": "hi"}], key=1) == "Hello there."
    assert ["stream_options" in b for b in bodies] == [True, False, False]
    assert a.forget(1) is None  # no usage reported: unknown, not zero


@pytest.mark.parametrize("phase", ["headers", "body", "stream", "models"])
def test_timeout_bounds_a_slowly_dripping_answer(phase):
    """--timeout bounds the whole request, not each read: a status line and headers, a body, a
    streamed event, or the start-up /models answer dripped byte by byte all fail in time."""
    from userlm_local.assistants import AssistantError
    from userlm_local.assistants.openai_http import OpenAIAssistant
    from userlm_local.util.errors import UserError

    stop = threading.Event()

    class Drip(FixtureHandler):
        def drip(self, data: bytes) -> None:
            for b in data:  # each read is fast; the whole answer takes ~10 s or more
                if stop.is_set():
                    return
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.05)

        def answer(self, body: bytes, content_type: str) -> None:
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nX-Pad: {'p' * 300}\r\n\r\n").encode()
            if phase == "headers":
                self.drip(head)
                return
            self.wfile.write(head)
            self.wfile.flush()
            self.drip(body)

        def do_GET(self):
            self.answer(json.dumps({"data": [{"id": "m"}], "pad": "p" * 400}).encode(), "application/json")

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if phase == "stream":
                event = json.dumps({"choices": [{"delta": {"content": "x" * 300}}]})
                self.answer(f"data: {event}\n\ndata: [DONE]\n\n".encode(), "text/event-stream")
            else:
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "x" * 200}}]}).encode()
                self.answer(body, "application/json")

    with fixture_server(Drip) as url:
        try:
            a = OpenAIAssistant(f"{url}/v1", model="m", timeout=1, retries=0, stream=phase == "stream")
            done = {}

            def call():
                try:
                    a.check() if phase == "models" else a.reply([{"role": "user", "content": "hi"}])
                except (AssistantError, UserError) as exc:
                    done["error"] = str(exc)

            t = threading.Thread(target=call, daemon=True)
            t.start()
            t.join(timeout=8)  # well before the answer would be complete
            assert not t.is_alive(), "the request was not bounded by --timeout"
            assert "timeout" in done["error"]
        finally:
            stop.set()  # before the server stops


def test_links_to_a_transcript_in_use_are_refused(tiny_model, intents_file, tmp_path, capsys):
    """A symbolic or hard link to the file another campaign writes takes the same lock."""
    from userlm_local.simulation.transcripts import TranscriptWriter

    out = tmp_path / "t.jsonl"
    assert scripted(tiny_model, intents_file, out, "--limit", 1, "--max-turns", 1, "--max-new-tokens", 4) == 0
    before = out.read_bytes()
    (tmp_path / "sym.jsonl").symlink_to(out)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "hard.jsonl").hardlink_to(out)
    with TranscriptWriter.open(out, "resume"):
        for link in (tmp_path / "sym.jsonl", tmp_path / "sub" / "hard.jsonl"):
            rc = scripted(tiny_model, intents_file, link, "--limit", 2, "--max-turns", 1, "--resume")
            err = capsys.readouterr().err.strip()
            assert rc == 2 and "another campaign is writing this file" in err and len(err.splitlines()) == 1, err
    assert out.read_bytes() == before
    # a transcript the running campaign created itself (absent when it opened it), hard-linked then
    fresh = tmp_path / "fresh.jsonl"
    with TranscriptWriter.open(fresh, "new") as writer:
        writer.write({"id": "x/0/0", "intent_id": "x", "trial": 0, "seed": 0, "messages": [], "error": None})
        (tmp_path / "sub" / "fresh-hard.jsonl").hardlink_to(fresh)
        rc = scripted(tiny_model, intents_file, tmp_path / "sub" / "fresh-hard.jsonl", "--limit", 2, "--max-turns", 1,
                      "--resume")
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "another campaign is writing this file" in err, err
    assert len(fresh.read_text().splitlines()) == 1


def test_overwrite_keeps_the_old_transcript_until_a_new_record_exists(tiny_model, intents_file, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert scripted(tiny_model, intents_file, out, "--limit", 2, "--max-turns", 1, "--max-new-tokens", 4) == 0
    before = out.read_bytes()
    rc = scripted(tmp_path / "typo.gguf", intents_file, out, "--overwrite")
    assert rc == 2 and "no such file or directory" in capsys.readouterr().err
    assert out.read_bytes() == before  # a run that could not start replaced nothing
    assert scripted(tiny_model, intents_file, out, "--limit", 1, "--max-turns", 1, "--max-new-tokens", 4,
                    "--overwrite") == 0
    assert len(records(out)) == 1


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_bad_timeouts_are_one_line(value, capsys):
    rc = main(["simulate", "--quiet", "--user", "tiny", "--assistant", "http://127.0.0.1:9/v1", "--timeout", value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith("--timeout must be a number of seconds > 0") and len(err.splitlines()) == 1


def test_an_empty_out_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--quiet", "--user", "tiny", "--assistant", "tiny", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_disk_error_mid_campaign_is_one_line_and_keeps_what_was_written(tiny_model, intents_file, tmp_path):
    """The transcript hits the file-size limit (EFBIG, a real OS failure, like a full disk) after
    its first record: one line, a non-zero exit, the records before it intact."""
    import resource

    out = tmp_path / "t.jsonl"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    argv = [sys.executable, "-m", "userlm_local.cli", "simulate", "--quiet", "--user", str(tiny_model),
            "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}", "--intents", str(intents_file),
            "--max-turns", "2", "--max-new-tokens", "8", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "cannot write the transcript" in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    recs = records(out)  # whole lines only
    assert 1 <= len(recs) < len(INTENTS)
    assert not (tmp_path / ".t.jsonl.lock").exists()


def test_a_second_ctrl_c_exits_at_once(tiny_model, intents_file, tmp_path):
    """The first Ctrl-C lets conversations in flight end at their next turn (said on screen); a
    second one exits at once, even while an HTTP answer is still on its way."""
    received = threading.Event()
    stop = threading.Event()

    class Slow(FixtureHandler):
        def do_GET(self):  # /models
            self.send_body(json.dumps({"data": [{"id": "slow"}]}).encode(), ctype=None)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            received.set()
            stop.wait(120)  # an answer that takes minutes

    out = tmp_path / "t.jsonl"
    with fixture_server(Slow) as url:
        argv = [sys.executable, "-m", "userlm_local.cli", "simulate", "--quiet", "--user", str(tiny_model),
                "--assistant", f"{url}/v1", "--timeout", "300", "--retries", "0",
                "--intents", str(intents_file), "--max-turns", "3", "--max-new-tokens", "8", "--out", str(out)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert received.wait(240), "the campaign never asked the assistant"
            proc.send_signal(signal.SIGINT)
            time.sleep(1.0)
            assert proc.poll() is None  # the first Ctrl-C waits for the answer in flight
            proc.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=30)
            assert time.monotonic() - t0 < 15
        finally:
            if proc.poll() is None:
                proc.kill()
            stop.set()  # before the server stops
    assert proc.returncode == 130, err
    assert "Ctrl-C again to stop now" in err and "rerun with --resume" in err and "Traceback" not in err, err
    assert not (tmp_path / ".t.jsonl.lock").exists()


def test_resume_with_other_settings_warns(tiny_model, intents_file, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert scripted(tiny_model, intents_file, out, "--max-new-tokens", 4, "--limit", 1, "--max-turns", 1) == 0
    capsys.readouterr()
    assert scripted(tiny_model, intents_file, out, "--max-new-tokens", 4, "--limit", 2, "--max-turns", 1,
                    "--resume") == 0
    assert "warning" not in capsys.readouterr().err  # the same setup
    assert scripted(tiny_model, intents_file, out, "--max-new-tokens", 4, "--limit", 3, "--max-turns", 2,
                    "--resume") == 0
    err = capsys.readouterr().err
    assert "holds records made with another user model, assistant or settings" in err
    assert [r["config"]["max_turns"] for r in records(out)] == [1, 1, 2]


def test_a_local_assistant_samples_as_asked_and_the_summary_says_where_time_went(tiny_model, intents_file, tmp_path,
                                                                                  capsys):
    """--assistant-temperature/--assistant-top-p/--assistant-repeat-penalty reach a local assistant
    and its transcript's setup; the summary's rates are each model's own (tokens over the seconds
    it worked), and the wall time's split adds up."""
    from userlm_local.defaults import tiny_assistant_model

    out = tmp_path / "t.jsonl"
    common = ["--user", tiny_model, "--assistant", tiny_assistant_model(), "--intents", intents_file, "--limit", 2,
              "--max-turns", 3, "--max-new-tokens", 8, "--assistant-max-tokens", 24, "--threads", 1]
    assert simulate(*common, "--out", out, "--assistant-temperature", 0.7, "--assistant-top-p", 0.5,
                    "--assistant-repeat-penalty", 1.3, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    recs = records(out)
    assert {json.dumps(r["assistant"]["sampling"]) for r in recs} == {
        json.dumps({"temperature": 0.7, "top_p": 0.5, "repeat_penalty": 1.3})}
    u, a = summary["user_model"], summary["assistant"]
    assert u["decode_tokens"] == sum(r["usage"]["decode_tokens"] for r in recs) > 0
    assert u["decode_tok_s"] == pytest.approx(u["decode_tokens"] / u["decode_seconds"], rel=0.05)  # seconds shown rounded
    assert u["prefill_seconds"] + u["decode_seconds"] <= u["seconds"] + 0.05
    assert a["completion_tokens"] == sum(r["usage"]["assistant"]["completion_tokens"] for r in recs) > 0
    assert a["decode_tok_s"] == pytest.approx(a["completion_tokens"] / a["decode_seconds"], rel=0.05)
    assert u["seconds"] + a["seconds"] <= summary["wall_seconds"] + 0.05
    assert abs(sum(summary["share"].values()) - 1) < 0.01
    # the plain summary, as a person reads it
    assert simulate(*common, "--out", tmp_path / "u.jsonl") == 0
    text = capsys.readouterr().out
    assert re.search(r"user model: [0-9.]+s, prefill \d+ tokens at [0-9.]+/s, decode \d+ tokens at [0-9.]+/s", text)
    assert re.search(r"assistant: [0-9.]+s, prefill \d+ tokens at [0-9.]+/s, decode \d+ tokens at [0-9.]+/s", text)
    assert re.search(r"wall time: user model \d+%, assistant \d+%, other \d+%", text)
    assert "tok/s" not in text.split("user model:")[0]  # no rate over the whole wall time
    # greedy and no penalty by default for a model other than the default assistant
    assert {json.dumps(r["assistant"]["sampling"]) for r in records(tmp_path / "u.jsonl")} == {
        json.dumps({"temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.0})}


def test_the_default_assistant_gets_its_sampling_defaults_and_typed_values_win():
    """SmolLM2-135M-Instruct as the assistant: its card's temperature and top-p and the measured
    repetition penalty unless typed; any other local model: greedy."""
    import argparse

    from userlm_local.commands.simulate import assistant_sampling
    from userlm_local.defaults import DEFAULT_ASSISTANT_SAMPLING, default_assistant_model, tiny_assistant_model

    none = argparse.Namespace(assistant_temperature=None, assistant_top_p=None, assistant_repeat_penalty=None)
    default = str(default_assistant_model())
    assert assistant_sampling(none, default, True) == DEFAULT_ASSISTANT_SAMPLING
    typed = argparse.Namespace(assistant_temperature=0.0, assistant_top_p=None, assistant_repeat_penalty=1.0)
    assert assistant_sampling(typed, default, True) == {**DEFAULT_ASSISTANT_SAMPLING, "temperature": 0.0,
                                                        "repeat_penalty": 1.0}
    assert assistant_sampling(none, str(tiny_assistant_model()), True) == {}
    http = argparse.Namespace(assistant_temperature=0.0, assistant_top_p=None, assistant_repeat_penalty=None)
    assert assistant_sampling(http, "http://localhost:1/v1", False) == {"temperature": 0.0}
    assert assistant_sampling(none, "http://localhost:1/v1", False) == {}  # the endpoint's own default


class HostileEndpoint:
    """An OpenAI-shaped endpoint whose n-th chat answer (1-based) is the planned abuse."""

    def __init__(self, plan: dict, models: bytes = b'{"data": [{"id": "m"}]}'):
        self.plan, self.seen = plan, 0
        ep = self

        class Handler(FixtureHandler):
            def do_GET(self):
                self.send_body(models)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                ep.seen += 1
                kind = ep.plan.get(ep.seen, "ok")
                ok = {"choices": [{"message": {"role": "assistant", "content": "Fine."}}]}
                if kind == "ok":
                    return self.send_body(json.dumps(ok).encode())
                if kind == "huge":  # 20 MB of valid JSON
                    return self.send_body(json.dumps({"choices": [{"message": {"content": "x" * 20_000_000}}]}).encode())
                if kind == "2mb":  # within the default bound, past --max-reply-mib 1
                    return self.send_body(json.dumps({"choices": [{"message": {"content": "x" * 2_000_000}}]}).encode())
                if kind == "cut":  # announces more than it sends, then closes
                    self.send_response(200)
                    self.send_header("Content-Length", "5000")
                    self.end_headers()
                    self.wfile.write(json.dumps(ok).encode()[:30])
                    self.close_connection = True
                    return None
                if kind == "deep":  # JSON nested past the parser's recursion
                    return self.send_body(b"[" * 100_000 + b"]" * 100_000)
                events = {"stream_ok": [b'data: {"choices": [{"delta": {"content": "Fine."}}]}\n', b"data: [DONE]\n"],
                          "stream_list": [b"data: [1, 2]\n", b"data: [DONE]\n"],
                          "stream_null": [b'data: {"choices": [null]}\n', b"data: [DONE]\n"],
                          "stream_int": [b'data: {"choices": [{"delta": {"content": 5}}]}\n', b"data: [DONE]\n"],
                          "stream_deep": [b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", b"data: [DONE]\n"],
                          "stream_huge": [b'data: {"choices": [{"delta": {"content": "' + b"y" * 10_000 + b'"}}]}\n'] * 1000,
                          "stream_endless_line": [b"data: " + b"z" * 12_000_000]}[kind]
                self.send_body(b"".join(events), ctype="text/event-stream")

        self.httpd, url = start_fixture_server(Handler)
        self.url = f"{url}/v1"

    def close(self):
        stop_fixture_server(self.httpd)


@pytest.mark.parametrize("stream, plan, says", [
    (False, {1: "huge", 2: "cut"}, ["the reply is larger than 8 MiB", "the answer was cut short: 30 of the 5000 bytes"]),
    (True, {1: "stream_huge", 2: "stream_endless_line", 3: "stream_list", 4: "stream_null", 5: "stream_int"},
     ["the reply is larger than 8 MiB", "the reply is larger than 8 MiB", "not a JSON object",
      "choices[0] is not an object", "content is not a string"]),
])
def test_a_hostile_endpoint_ends_its_conversations_as_errors_and_the_campaign_goes_on(
        stream, plan, says, tiny_model, intents_file, tmp_path, capsys):
    """A reply past the size bound, or streamed chunks of the wrong shape, end that conversation
    as an error record (never a traceback, never the whole reply in memory); the rest run."""
    ep = HostileEndpoint({**plan, len(plan) + 1: "stream_ok" if stream else "ok"})
    out = tmp_path / "t.jsonl"
    try:
        code = simulate("--user", tiny_model, "--assistant", ep.url, "--intents", intents_file,
                        "--limit", len(plan) + 1, "--max-turns", 2, "--max-new-tokens", 6, "--retries", 0,
                        "--out", out, *(["--stream"] if stream else []))
    finally:
        ep.close()
    assert code == 1
    by = {r["intent_id"]: r for r in records(out)}
    assert [by[f"i{n}"]["ended_by"] for n in range(len(plan) + 1)] == ["error"] * len(plan) + ["max_turns"]
    for n, text in enumerate(says):
        assert text in by[f"i{n}"]["error"], by[f"i{n}"]["error"]
    assert len(by[f"i{len(plan)}"]["messages"]) == 4  # system, user, assistant "Fine.", user


@pytest.mark.parametrize("stream, plan, says", [
    (False, {1: "deep"}, ["nested too deeply"]),
    (True, {1: "stream_deep"}, ["nested too deeply"]),
])
def test_deeply_nested_json_from_an_endpoint_is_an_error_record(stream, plan, says, tiny_model, intents_file, tmp_path):
    """JSON nested past the parser's recursion was a RecursionError that the retry loop let through."""
    test_a_hostile_endpoint_ends_its_conversations_as_errors_and_the_campaign_goes_on(
        stream, plan, says, tiny_model, intents_file, tmp_path, None)


def test_the_reply_bound_is_configurable(tiny_model, intents_file, tmp_path, capsys):
    """--max-reply-mib: a 2 MB reply passes the default 8 MiB and ends its conversation at 1 MiB."""
    for mib, ended in ((None, "context"), ("1", "error")):  # (2 MB outgrow the user model's context)
        ep, out = HostileEndpoint({1: "2mb"}), tmp_path / f"t{mib}.jsonl"
        try:
            code = simulate("--user", tiny_model, "--assistant", ep.url, "--intents", intents_file, "--limit", 1,
                            "--max-turns", 2, "--max-new-tokens", 6, "--retries", 0, "--out", out,
                            *(["--max-reply-mib", mib] if mib else []))
        finally:
            ep.close()
        (r,) = records(out)
        assert (code, r["ended_by"]) == ((0, ended) if mib is None else (1, ended)), r.get("error")
        if mib:
            assert "the reply is larger than 1 MiB (--max-reply-mib)" in r["error"]
    assert simulate("--max-reply-mib", "0", "--out", tmp_path / "x.jsonl") == 2
    assert "--max-reply-mib must be between" in capsys.readouterr().err


@pytest.mark.parametrize("models", [b"[]", b'{"data": 5}', b'{"data": [5, {"id": 7}]}'])
def test_a_models_listing_of_another_shape_is_not_a_traceback(models, tiny_model, intents_file, tmp_path):
    ep = HostileEndpoint({}, models=models)
    try:
        assert simulate("--user", tiny_model, "--assistant", ep.url, "--intents", intents_file, "--limit", 1,
                        "--max-turns", 2, "--max-new-tokens", 6, "--out", tmp_path / "t.jsonl") == 0
    finally:
        ep.close()


@pytest.mark.parametrize("what, says", [
    ("assistant http://[::1", "not a valid URL (Invalid IPv6 URL)"),
    ("assistant http://localhost:99999/v1", "not a valid URL"),
    ("intents /dev/zero", "larger than 256 MiB; not an intents file"),  # was read forever
    ("intents SURROGATE", "the intent holds a lone surrogate"),          # was a tokenizer TypeError
    ("assistant script:/dev/zero", "larger than 256 MiB; not an assistant script"),  # was a MemoryError
    ("assistant SCRIPT_SURROGATE", "reply 1 holds a lone surrogate"),    # was a tokenizer TypeError
    ("intents DEEP", "not valid JSON (nested too deeply)"),                # was a RecursionError
    ("out DEEP", "line 1 is not a transcript record"),                    # (with --resume) the same
])
def test_hostile_inputs_are_one_line(what, says, tiny_model, tmp_path, capsys):
    option, value = what.split(" ", 1)
    if value == "SURROGATE":
        value = tmp_path / "s.jsonl"
        value.write_text('{"id": "a", "intent": "You are a user \\udc80 planning"}\n')
    if value == "SCRIPT_SURROGATE":
        (tmp_path / "s.json").write_text('["Fine \\udc80 thanks"]')
        value = f"script:{tmp_path / 's.json'}"
    if value == "DEEP":
        value = tmp_path / "deep.jsonl"
        value.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    args = {"assistant": f"script:{EXAMPLES / 'garden-replies.txt'}", "out": tmp_path / "t.jsonl", option: value}
    assert simulate("--user", tiny_model, *[x for k, v in args.items() for x in (f"--{k}", v)],
                    *(["--resume"] if option == "out" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


def _assistant_with_template(tmp_path, template: str):
    import shutil

    from userlm_local.defaults import tiny_assistant_model

    d = tmp_path / "asst"
    shutil.copytree(tiny_assistant_model(), d)
    (d / "chat_template.jinja").write_text(template)
    return d


@pytest.mark.parametrize("template, says", [
    ("{% for x in %}", "the chat template does not compile (Expected an expression"),
    ("{{ raise_exception('only user and assistant roles are supported') }}",
     "the chat template failed on these messages (TemplateError: only user and assistant roles are supported)"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "(SecurityError: access to attribute '__class__'"),
    # bounded like the code it is: these hung the process, or killed it for memory
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}"
     "{% endfor %}{% endfor %}", "the chat template ran past its budget (2 s, 10,000,000 loop items)"),
    ("{{ 'x' * 10**10 }}", "the chat template builds a sequence of 10,000,000,000 items"),
    ("{% set s = namespace(v='ab') %}{% for i in range(60) %}{% set s.v = s.v + s.v %}{% endfor %}{{ s.v }}",
     "the chat template builds a string past its size budget"),
    ("{# " + "x" * 1_000_001 + " #}", "the chat template is 1,000,007 characters; at most 1,000,000"),
])
def test_a_chat_template_that_cannot_work_is_one_line_at_load(template, says, tiny_model, intents_file, tmp_path,
                                                               capsys):
    """Issue 29: a template's syntax error, raise_exception or the sandbox's refusal were tracebacks."""
    asst = _assistant_with_template(tmp_path, template)
    assert simulate("--user", tiny_model, "--assistant", asst, "--intents", intents_file, "--limit", 1,
                    "--out", tmp_path / "t.jsonl") == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "t.jsonl").exists()


def test_a_chat_template_that_refuses_some_messages_ends_those_conversations_as_errors(tiny_model, intents_file,
                                                                                       tmp_path):
    """It renders a first user message, then refuses the conversation once an assistant turn is in
    it: an error record per conversation, not a traceback; and the server answers 400 naming
    'messages' (it was a plain-text 500)."""
    from serving import start_server, stop_server

    openai = pytest.importorskip("openai")
    asst = _assistant_with_template(tmp_path, "{% for m in messages %}{% if m.role == 'assistant' %}"
                                              "{{ raise_exception('no assistant turns here') }}{% endif %}"
                                              "{{ m.content }}{% endfor %}")
    out = tmp_path / "t.jsonl"
    assert simulate("--user", tiny_model, "--assistant", asst, "--intents", intents_file, "--limit", 2,
                    "--max-turns", 3, "--max-new-tokens", 6, "--out", out) == 1
    assert [(r["ended_by"], "no assistant turns here" in r["error"]) for r in records(out)] == [("error", True)] * 2
    proc, port = start_server(str(asst), "--max-tokens", "4")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="default", max_tokens=4, messages=[
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "More"}])
        assert caught.value.body["param"] == "messages" and "no assistant turns here" in caught.value.body["message"]
        r = client.chat.completions.create(model="default", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert r.choices[0].message.role == "assistant"  # the server goes on
    finally:
        stop_server(proc)
