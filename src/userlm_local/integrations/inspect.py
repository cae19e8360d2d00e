"""A UserLM as the user of an Inspect task: ``--solver userlm_local/simulated_user``.

    inspect eval TASK.py --model openai/gpt-4o-mini --solver userlm_local/simulated_user \\
        -S model=tiny -S max_turns=6

The solver runs the conversation between our simulated user and Inspect's model under test: the
intent is the sample's ``metadata["intent"]``, else its input; each round our user writes a turn
(``SimulatedUserModel``, one KV cache per sample) and ``generate`` has the model answer, until the user
ends the conversation or ``max_turns``.  The transcript is ``state.messages`` for Inspect's scorers;
``state.metadata["userlm"]`` says how it ended.  inspect-ai is imported here only (the 'inspect'
extra); the package registers this solver through the ``inspect_ai`` entry point."""

from __future__ import annotations

from functools import lru_cache

try:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser
    from inspect_ai.solver import Generate, TaskState, solver
except ImportError as exc:  # said once, where the solver is asked for
    raise ImportError("the Inspect solver needs inspect-ai: pip install 'userlm-local[inspect]'") from exc

from .user import SimulatedUserModel


@lru_cache(maxsize=4)
def _user_model(model: str | None, guardrails: str, max_new_tokens: int, seed: int) -> SimulatedUserModel:
    return SimulatedUserModel(model, guardrails=guardrails, max_new_tokens=max_new_tokens, seed=seed)


@solver
def simulated_user(model: str | None = None, max_turns: int = 6, guardrails: str = "none",
                   max_new_tokens: int = 96, seed: int = 0):
    """Our simulated user against the model under test, for at most ``max_turns`` user turns."""
    if max_turns < 1:
        raise ValueError("max_turns must be at least 1")

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        user = _user_model(model, guardrails, max_new_tokens, seed)
        intent = (state.metadata or {}).get("intent") or state.input_text
        state.messages = [m for m in state.messages if m.role == "system"]  # the input becomes the intent
        name = f"{state.sample_id}/{state.epoch}"
        ended_by = "max_turns"
        for _ in range(max_turns):
            history = [{"role": m.role, "content": m.text} for m in state.messages if m.role in ("user", "assistant")]
            reply = await user.anext_turn(history, intent=intent, conversation=name)
            if reply.ended or reply.exhausted:
                ended_by = "user" if reply.ended else "guardrails_exhausted"
                break
            state.messages.append(ChatMessageUser(content=reply.text))
            state = await generate(state)
            if not isinstance(state.messages[-1], ChatMessageAssistant):
                ended_by = "model"
                break
        user.forget(name)
        state.metadata = {**(state.metadata or {}), "userlm": {"ended_by": ended_by, "intent": intent}}
        return state

    return solve
