"""``bench --extrinsic``: each UserLM as the simulated user of eval's tasks against one assistant,
paired by task and trial, CAND - REF task score with the bench's three-way verdict.

The assistant is a script that is right on its second reply and never before, so every score is
exact: a conversation is solved exactly when the user reaches its second turn."""

from __future__ import annotations

import json

import pytest

from userlm_local.cli import main
from userlm_local.defaults import tiny_user_model
from userlm_local.evaluation.extrinsic_preservation import (
    ExtrinsicConfig,
    compare_tasks,
    run_tasks,
)
from userlm_local.evaluation.sandbox import Sandbox
from userlm_local.evaluation.tasks import load_tasks

TASKS = [{"id": f"sum{i}", "problem": f"Task {i}: Tom has 3 apples and buys 4 more. How many apples does he have?",
          "grader": {"type": "answer", "answer": "7"}} for i in range(12)]


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("USERLM_LOCAL_CACHE", str(tmp_path_factory.getbasetemp() / "userlm-data-cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("extrinsic")
    tasks = d / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    script = d / "script.json"
    script.write_text(json.dumps(["I am not sure yet, tell me more.", "The answer is 7."]))
    return {"tasks": tasks, "script": script}


def test_bench_extrinsic_suite_ci(files, tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["bench", "--suite", "ci", "--limit", "2", "--trials", "1", "--max-turns", "1", "--bootstrap", "200",
               "--extrinsic", str(files["tasks"]), "--assistant", f"script:{files['script']}",
               "--extrinsic-limit", "12", "--extrinsic-max-turns", "2", "--out", str(out), "--quiet"])
    assert rc in (0, 1, 3), capsys.readouterr().err
    report = json.loads((out / "bench.json").read_text())
    ext = report["extrinsic"]
    assert ext["config"]["n_tasks"] == 12 and ext["config"]["max_turns"] == 2
    assert ext["ref"]["score"] == 100.0 and ext["ref"]["conversations"] == 12
    assert ext["ref"]["user_turns_mean"] == 2.0 and ext["ref"]["ended_by"] == {"solved": 12}
    assert len(ext["candidates"]) == 3
    for c, e in zip(report["candidates"], ext["candidates"]):
        m = e["metric"]
        assert e["label"] == c["label"] and c["extrinsic"] == m
        assert m["ref"] == m["cand"] == 100.0 and m["diff"] == 0.0 and m["verdict"] == "preserved"
        assert m["pairs"] == {**m["pairs"], "conversations": 12, "both_solved": 12, "ref_only": 0, "cand_only": 0}
        assert "task_score" not in c["degraded"] + c["inconclusive"]
    md = (out / "report.md").read_text()
    assert "## Extrinsic preservation" in md and "| REF | 100.0% |" in md and "+0.0 [+0.0, +0.0] | preserved" in md
    assert "Extrinsic preservation" in (out / "report.html").read_text()


def test_a_user_that_stops_short_costs_the_assistant_its_score(files):
    """The same tiny UserLM, allowed one user turn instead of two: the script never reaches its right
    reply, so CAND - REF is -100 points on every one of 12 tasks: degraded; REF against itself: preserved."""
    tasks = load_tasks(str(files["tasks"]))
    cfg = ExtrinsicConfig(tasks=tasks, tasks_name="test", assistant=f"script:{files['script']}", max_turns=2)
    sandbox = Sandbox()
    two, _ = run_tasks(tiny_user_model(), cfg, sandbox, progress=False)
    cfg.max_turns = 1
    one, _ = run_tasks(tiny_user_model(), cfg, sandbox, progress=False)
    worse = compare_tasks(two, one, tasks, 1, n_boot=500)
    assert worse["ref"] == 100.0 and worse["cand"] == 0.0 and worse["verdict"] == "degraded"
    assert worse["pairs"]["ref_only"] == 12 and worse["verdict_interval"] == [-100.0, -100.0]
    same = compare_tasks(two, two, tasks, 1, n_boot=500)
    assert same["verdict"] == "preserved" and same["pairs"]["identical_user_turns"] == 12
    with pytest.raises(ValueError, match="pairs every"):
        compare_tasks(two, {k: v for k, v in one.items() if k[0] != "sum3"}, tasks, 1, n_boot=500)


@pytest.mark.parametrize("argv,needle", [
    (["--extrinsic", "humaneval"], "--extrinsic needs --assistant"),
    (["--assistant", "script:x.json"], "--assistant goes with --extrinsic"),
    (["--extrinsic", "no-such-tasks.jsonl", "--assistant", "script:x.json"], "no such task file"),
    (["--extrinsic", "humaneval", "--assistant", "script:x.json", "--extrinsic-limit", "1"], "--extrinsic-limit"),
])
def test_bench_extrinsic_bad_input(argv, needle, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["bench", "--suite", "ci", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and not out.exists()
