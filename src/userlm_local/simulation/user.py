"""``UserSimulator``: the next user turn of a conversation, with guardrails.

The backend session mirrors the conversation's token ids.  Before a turn, only
the ids the session lacks are decoded; a guardrail redraw trims the session back
to the turn start and reuses the logits kept there, so the prefix is never
decoded twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Generator

import numpy as np

from ..runtime.backends.base import Backend, BackendBase, Session
from ..text.conversation import USER, Conversation
from ..util.errors import UserError
from ..runtime.decode import decode_steps, drive, prob_of, sync_session
from .converse import Outcome
from .guardrails import Draft, Guardrails, processors, redraw
from ..runtime.sampling import PRESETS, Noise, SamplingParams, make_sampler

OK, ENDED, EXHAUSTED = Outcome.OK, Outcome.ENDED, Outcome.EXHAUSTED


@dataclass
class Turn:
    text: str
    token_ids: list[int]
    ended: bool
    p_end: float | None
    outcome: Outcome
    truncated: bool = False
    rejected: list[dict] = field(default_factory=list)
    usage: dict = field(default_factory=dict)


class UserSimulator:
    remote = False  # a local engine: its decode steps go through a Scheduler

    def __init__(self, backend: Backend, *, sampling: SamplingParams = PRESETS["paper"],
                 guardrails: Guardrails = Guardrails.none(), max_new_tokens: int = 96):
        if not isinstance(backend, BackendBase):
            raise TypeError(f"backend must be a loaded model (userlm_local.runtime.backends.load_backend(path)), "
                            f"not {type(backend).__name__}")
        check_setup(sampling, guardrails, max_new_tokens)
        self.backend = backend
        self.fmt = backend.fmt
        self.sampling = sampling
        self.guardrails = guardrails
        self.max_new_tokens = max_new_tokens
        self.sampler = make_sampler(sampling)
        self.processors = processors(guardrails, self.fmt)

    def start(self, intent: str | None, *, seed: int = 0, key: tuple = ()) -> "SimulatedUser":
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        return SimulatedUser(self, Conversation(self.fmt, intent), self.backend.new_session(), Noise.for_(seed, *key))


def check_setup(sampling, guardrails, max_new_tokens) -> None:
    """A simulator's settings (local or remote): wrong types are named here, not deep inside the first turn."""
    if not isinstance(sampling, SamplingParams):
        raise TypeError(f"sampling must be a SamplingParams (e.g. PRESETS['paper']), not {type(sampling).__name__}")
    if not isinstance(guardrails, Guardrails):
        raise TypeError("guardrails must be a Guardrails instance (Guardrails.paper() or Guardrails.none()), "
                        f"not {guardrails!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 2:
        raise UserError(f"max_new_tokens must be at least 2 (a turn's leading newline is one of them), "
                        f"got {max_new_tokens!r}")


class SimulatedUser:
    """One conversation, its backend session and its own noise: the draw at position k of the
    draft ``attempt`` of user turn ``t`` is keyed by ``noise.child(t, attempt).key(k)``, so it
    depends on the conversation's keys and its place only (not on what ran before or beside it),
    and another model given the same noise draws from the same Gumbel noise (coupled)."""

    def __init__(self, sim: UserSimulator, conversation: Conversation, session: Session, noise: Noise):
        self.sim = sim
        self.conversation = conversation
        self.session = session
        self.noise = noise
        self.turn_index = len(conversation.user_turns())  # the next user turn's place (a count, never
        # decreased: dropping old exchanges to fit the context does not reuse a turn's noise)

    def add_assistant(self, text: str) -> None:
        self.conversation.add_assistant(text)

    def next_turn(self) -> Turn:
        """Generate the next user turn on this conversation's own session."""
        return drive(self.turn_steps(), self.session)

    def turn_steps(self) -> Generator[list[int], np.ndarray, Turn]:
        """The turn as a coroutine: yields ids to decode, receives the last position's logits.

        ``next_turn`` drives it on one session; ``runtime.scheduler`` and ``drive_many`` drive many at once
        so their decode steps share one engine call.
        """
        conv, sim = self.conversation, self.sim
        if conv.state != USER:
            conv._expect(USER, "a user turn", None)
        t0 = time.perf_counter()
        new, cached = sync_session(self.session, conv.tokens)
        logits = yield new
        t1 = time.perf_counter()  # the prefill's end: what follows is decoding (and redraws)
        start = len(self.session.tokens)
        ids = sim.fmt.ids
        decoded = 0
        turn_index = self.turn_index
        self.turn_index += 1

        def draft(attempt: int):
            nonlocal decoded
            if attempt:  # rewind the KV cache to the open header: a redraw costs no prefill
                self.session.trim(len(self.session.tokens) - start)
            p_end = None

            def watch(so_far: list[int], raw: np.ndarray) -> None:
                nonlocal p_end
                if not so_far or so_far == [ids.newline]:  # first content position
                    p_end = prob_of(raw, ids.end_conversation)

            turn = yield from decode_steps(logits, sampler=sim.sampler, noise=self.noise.child(turn_index, attempt),
                                           processors=sim.processors,
                                           stop_ids=ids.stop_ids, max_tokens=sim.max_new_tokens, watch=watch)
            decoded += len(turn) - 1  # every sampled id but the last was fed back
            stop = turn[-1] if turn[-1] in ids.stop_ids else None
            text = sim.fmt.tokenizer.decode(turn[:-1] if stop is not None else turn)
            return Draft(turn, text[1:] if text.startswith("\n") else text, stop, p_end)

        v = yield from redraw(sim.guardrails, ids.end_conversation, draft, conv.intent, conv.user_turns())
        t2 = time.perf_counter()
        usage = {"cached_tokens": cached, "prefill_tokens": len(new), "decode_tokens": decoded,
                 "seconds": round(t2 - t0, 6), "prefill_seconds": round(t1 - t0, 6), "decode_seconds": round(t2 - t1, 6)}
        if v.reason is not None:
            return Turn(text="", token_ids=[], ended=False, p_end=v.p_end, outcome=EXHAUSTED,
                        rejected=v.rejected, usage=usage)
        d = v.draft
        body = d.sampled[:-1] if d.stop is not None else d.sampled
        if v.ended:
            conv.end(d.sampled if d.stop == ids.end_conversation else body)
        else:
            conv.add_user(ids=body)
        return Turn(text=d.text, token_ids=body, ended=v.ended, p_end=v.p_end, outcome=ENDED if v.ended else OK,
                    truncated=d.stop is None, rejected=v.rejected, usage=usage)
