"""A UserLM as openevals' simulated user (``openevals.simulators.run_multiturn_simulation``).

    from openevals.simulators import run_multiturn_simulation
    from userlm_local.integrations.openevals import simulated_user, user_ended

    user = simulated_user(intent="You are a user chatting with an assistant language model to ...")
    result = run_multiturn_simulation(app=my_app, user=user, max_turns=8, stopping_condition=user_ended)

openevals gives the user callable the trajectory as the app sees it (the user's turns as 'user',
UserLM's own roles: nothing to flip) and cannot be stopped by its user, only by its
``stopping_condition``: ``user_ended`` stops the run once our user has said ``<|endconversation|>``
(the last user message).  openevals is not imported here: the callables only speak its contract."""

from __future__ import annotations

import uuid

from .user import SimulatedUserModel

END = "<|endconversation|>"


def simulated_user(model: str | None = None, *, intent: str, user_model: SimulatedUserModel | None = None, **options):
    """A ``user`` for ``run_multiturn_simulation``: each call asks the UserLM (loaded once; any form
    ``SimulatedUserModel`` takes) for the next user turn of the run's thread."""
    if not isinstance(intent, str) or not intent.strip():
        raise ValueError("simulated_user needs an intent: one sentence saying what the user wants")
    um = user_model or SimulatedUserModel(model, **options)

    def user(trajectory, *, thread_id: str | None = None, turn_counter: int | None = None, **_):
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in _messages(trajectory)
                    if m.get("role") in ("user", "assistant")]
        reply = um.next_turn(messages, intent=intent, conversation=thread_id or "openevals")
        return {"role": "user", "content": END if reply.ended else reply.text, "id": str(uuid.uuid4())}

    user.user_model = um
    return user


def user_ended(trajectory, *, turn_counter: int | None = None, **_) -> bool:
    """openevals' stopping condition: our user ended the conversation."""
    users = [m for m in _messages(trajectory) if m.get("role") == "user"]
    return bool(users) and (users[-1].get("content") or "").strip() == END


def _messages(trajectory) -> list[dict]:
    msgs = trajectory.get("messages", []) if isinstance(trajectory, dict) else list(trajectory or [])
    return [m if isinstance(m, dict) else {"role": getattr(m, "role", None) or _role(m), "content": m.content}
            for m in msgs]


def _role(message) -> str | None:
    kind = getattr(message, "type", None)  # a LangChain message: human / ai
    return {"human": "user", "ai": "assistant", "system": "system"}.get(kind, kind)
