"""``SimulatedUserModel``: the next user turn of an OpenAI-format conversation, for other programs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from userlm_local import SimulatedUserModel, UserError

INTENT = "You are a user chatting with an assistant language model to get tips for growing tomatoes."


@pytest.fixture(scope="module")
def user():
    with SimulatedUserModel("tiny", max_new_tokens=16) as u:
        yield u


def test_turns_reuse_the_kv_cache_as_the_history_grows(user):
    first = user.next_turn([], intent=INTENT, conversation="c2")
    assert first.usage["cached_tokens"] == 0 and first.usage["prefill_tokens"] > 0
    assert not first.ended  # conversation "c2" with seed 0 goes on (picked so; "c1" ends at once)
    history = [{"role": "user", "content": first.text}, {"role": "assistant", "content": "Water them deeply twice a week."}]
    second = user.next_turn(history, intent=INTENT, conversation="c2")
    # only the reply and the new header are decoded: the intent and the first turn are in the cache
    assert second.usage["cached_tokens"] > first.usage["prefill_tokens"] - 2
    again = SimulatedUserModel("tiny", max_new_tokens=16)
    try:  # a fresh object, the same seed and name: the same turns (keyed randomness)
        assert again.next_turn([], intent=INTENT, conversation="c2").text == first.text
        assert again.next_turn(history, intent=INTENT, conversation="c2").text == second.text
    finally:
        again.close()


def test_many_conversations_at_once_and_async(user):
    out = {}

    def ask(i):
        out[i] = user.next_turn([], intent=f"{INTENT} Ask about variety number {i}.", conversation=f"t{i}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(out) == 4 and all(r.text or r.ended for r in out.values())

    async def both():
        return await asyncio.gather(*(user.anext_turn([], intent=INTENT, conversation=f"a{i}") for i in range(2)))

    assert len(asyncio.run(both())) == 2


def test_bad_conversations_are_one_clear_error(user):
    with pytest.raises(UserError, match="the user speaks next"):
        user.next_turn([{"role": "user", "content": "hi"}], intent=INTENT)
    with pytest.raises(UserError):
        user.next_turn([{"role": "assistant", "content": "hi"}, {"role": "assistant", "content": "again"}], intent=INTENT)


def test_openevals_runs_our_user_against_a_real_app(user):
    """openevals' own run_multiturn_simulation, our user, an app that is the bundled tiny assistant."""
    pytest.importorskip("openevals")
    from openevals.simulators import run_multiturn_simulation

    from userlm_local.assistants.local import LocalAssistant
    from userlm_local.defaults import tiny_assistant_model
    from userlm_local.integrations.openevals import END, simulated_user, user_ended

    assistant = LocalAssistant.load(str(tiny_assistant_model()), max_tokens=16)
    history: list[dict] = []

    def app(message, **_):  # a real app: its own history, the tiny assistant answers
        history.append({"role": "user", "content": message["content"]})
        reply = assistant.reply(history, key="app")
        history.append({"role": "assistant", "content": reply})
        return {"role": "assistant", "content": reply}

    sim_user = simulated_user(intent=INTENT, user_model=user)
    result = run_multiturn_simulation(app=app, user=sim_user, max_turns=3, stopping_condition=user_ended,
                                      thread_id="oe-1")
    traj = result["trajectory"]
    users = [m for m in traj if m["role"] == "user"]
    assert users and all(m["content"] for m in users)
    assert len(users) == 3 or users[-1]["content"] == END  # ran to max_turns, or our user stopped it
    assert user_ended([{"role": "user", "content": END}], turn_counter=1)
    with pytest.raises(ValueError):
        simulated_user(intent=" ", user_model=user)


def test_inspect_runs_our_solver_against_a_served_model(tmp_path, monkeypatch):
    """The real inspect-ai: a task whose solver is found by its registry name, our simulated user
    against the bundled tiny assistant behind `userlm-local serve` (Inspect's OpenAI provider), and a
    scorer run on the transcript."""
    pytest.importorskip("inspect_ai")
    import sys
    from pathlib import Path

    from inspect_ai import Task, eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import SolverSpec

    sys.path.insert(0, str(Path(__file__).parent))
    from serving import start_server, stop_server

    monkeypatch.setenv("OPENAI_API_KEY", "none")
    proc, port = start_server("tiny", "--max-tokens", "12")
    try:
        task = Task(dataset=[Sample(input="help me grow tomatoes", target="tomato",
                                    metadata={"intent": INTENT}),
                             Sample(input="You are a user chatting with an assistant language model to plan a trip.",
                                    target="trip")],
                    scorer=includes())
        logs = inspect_eval(task, model="openai/tiny", model_base_url=f"http://127.0.0.1:{port}/v1",
                            solver=SolverSpec("userlm_local/simulated_user", {"model": "tiny", "max_turns": 2}),
                            model_args={"responses_api": False},  # our server speaks chat completions
                            log_dir=str(tmp_path), display="none")
    finally:
        stop_server(proc)
    (log,) = logs
    assert log.status == "success", log.error
    for sample in log.samples:
        roles = [m.role for m in sample.messages]
        ended = sample.metadata["userlm"]["ended_by"]
        assert ended in ("max_turns", "user")
        if ended == "max_turns":  # our user spoke first, the model answered, twice
            assert roles == ["user", "assistant", "user", "assistant"]
        assert sample.scores  # Inspect's scorer ran on the transcript
    assert log.samples[0].metadata["userlm"]["intent"] == INTENT  # metadata["intent"] wins over the input


def test_a_turn_past_the_context_gives_its_sequence_back(gguf_files):
    """A turn the session refuses is one clear error, and the conversation's llama.cpp sequence
    goes back: with one sequence, the next conversation still gets a turn (it was leaked)."""
    with SimulatedUserModel(str(gguf_files["q8_0"]), max_new_tokens=8, n_ctx=128, parallel=1) as u:
        long = [{"role": "user", "content": "tomatoes " * 5},
                {"role": "assistant", "content": "Water them deeply twice a week. " * 20}]
        for _ in range(2):
            with pytest.raises(UserError, match="more than this session's context of 128"):
                u.next_turn(long, intent=INTENT, conversation="long")
        assert u.next_turn([], intent=INTENT, conversation="short").usage["prefill_tokens"] > 0
