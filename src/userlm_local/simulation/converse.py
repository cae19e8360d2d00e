"""The one conversation loop: a user turn, then the assistant's reply, until one side ends it.

A campaign, ``chat`` and the prompted baseline run the same loop and differ only in the hooks:
how a turn is taken (through a scheduler or not), what may stop the conversation before a turn
(a stop request, a full context), what happens with each turn (a record, a printed line) and where
replies come from (an assistant, a file, the keyboard).  ``converse_steps`` is the loop itself, as a
coroutine (a campaign drives many of them on one thread); ``converse`` runs it with plain calls."""

from __future__ import annotations

from enum import Enum
from typing import Callable, Generator

import numpy as np

from ..assistants.base import AssistantError
from ..runtime.decode import Step, at_once, run_now
from ..util.errors import ContextFull


class _Named(str, Enum):
    """A closed set of strings: compares, hashes, prints and serialises as its value."""

    __hash__ = str.__hash__
    __str__ = str.__str__
    __format__ = str.__format__


class Outcome(_Named):
    """How one user turn came out."""

    OK = "ok"
    ENDED = "ended"  # the user ended the conversation
    EXHAUSTED = "guardrails_exhausted"  # every draft was rejected


class EndedBy(_Named):
    """How a conversation ended: the ``ended_by`` of a transcript record."""

    USER = "user"
    MAX_TURNS = "max_turns"
    CONTEXT = "context"  # no room for another turn
    GUARDRAILS_EXHAUSTED = "guardrails_exhausted"
    ERROR = "error"  # the assistant or a remote user model failed after its retries
    ASSISTANT = "assistant"  # chat: the assistant side had no more replies
    STOPPED = "stopped"  # the run stopped before the conversation ended (never recorded)


def converse(user, reply: Callable[[int], str | None], *, max_turns: int, take_turn=None,
             before_turn: Callable[[], EndedBy | None] | None = None, on_turn=None) -> tuple[EndedBy, str | None]:
    """(how it ended, the error message if it failed) of a conversation run to its end.

    ``user`` has ``next_turn() -> Turn`` and ``add_assistant(text)``; ``reply(turn_no)`` is the
    assistant's reply to user turn ``turn_no`` (from 1), None when it has no more; ``take_turn(user)``
    replaces ``user.next_turn()``; ``before_turn()`` may end the conversation before a turn;
    ``on_turn(turn)`` sees every turn, the last one included."""
    take = take_turn if take_turn is not None else (lambda u: u.next_turn())
    return run_now(converse_steps(user, at_once(reply), take_turn=at_once(take), max_turns=max_turns,
                                  before_turn=before_turn, on_turn=on_turn))


def converse_steps(user, reply: Callable[[int], Generator], *, take_turn: Callable[..., Generator], max_turns: int,
                   before_turn: Callable[[], EndedBy | None] | None = None,
                   on_turn=None) -> Generator[Step, np.ndarray, tuple[EndedBy, str | None]]:
    """``converse`` as a coroutine: ``take_turn(user)`` and ``reply(turn_no)`` are coroutines whose
    engine steps (``runtime.decode.Step``) it yields, so one driver can run many conversations
    with their steps batched (``drive_rounds``); ``at_once`` makes one of a plain call."""
    for turn_no in range(1, max_turns + 1):
        if before_turn is not None and (why := before_turn()) is not None:
            return why, None
        try:
            turn = yield from take_turn(user)
        except AssistantError as exc:  # a remote user model that failed after its retries
            return EndedBy.ERROR, str(exc)
        except ContextFull:  # the user model's session refused the turn (no ``before_turn`` check caught it)
            return EndedBy.CONTEXT, None
        if on_turn is not None:
            on_turn(turn)
        if turn.outcome == Outcome.EXHAUSTED:
            return EndedBy.GUARDRAILS_EXHAUSTED, None
        if turn.ended:
            return EndedBy.USER, None
        if turn_no == max_turns:
            break
        try:
            text = yield from reply(turn_no)
        except AssistantError as exc:
            return EndedBy.ERROR, str(exc)
        if text is None:
            return EndedBy.ASSISTANT, None
        user.add_assistant(text)
    return EndedBy.MAX_TURNS, None
