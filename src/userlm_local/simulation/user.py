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

from ..runtime.backends.base import Backend, Session
from ..text.conversation import USER, Conversation
from ..util.errors import UserError
from ..runtime.decode import decode_steps, drive, prob_of, sync_session
from .guardrails import Guardrails, check, processors
from ..runtime.sampling import PRESETS, SamplingParams, make_sampler, rng_for

OK, ENDED, EXHAUSTED = "ok", "ended", "guardrails_exhausted"


@dataclass
class Turn:
    text: str
    token_ids: list[int]
    ended: bool
    p_end: float | None
    outcome: str  # ok | ended | guardrails_exhausted
    truncated: bool = False
    rejected: list[dict] = field(default_factory=list)
    usage: dict = field(default_factory=dict)


class UserSimulator:
    remote = False  # a local engine: its decode steps go through a Scheduler

    def __init__(self, backend: Backend, *, sampling: SamplingParams = PRESETS["paper"],
                 guardrails: Guardrails = Guardrails.none(), max_new_tokens: int = 96):
        if not (hasattr(backend, "fmt") and hasattr(backend, "new_session")):
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
        rng = rng_for(seed, *key)
        return SimulatedUser(self, Conversation(self.fmt, intent), self.backend.new_session(), rng)


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
    """One conversation, its backend session and its own RNG stream."""

    def __init__(self, sim: UserSimulator, conversation: Conversation, session: Session,
                 rng: np.random.Generator):
        self.sim = sim
        self.conversation = conversation
        self.session = session
        self.rng = rng

    def add_assistant(self, text: str) -> None:
        self.conversation.add_assistant(text)

    def next_turn(self) -> Turn:
        """Generate the next user turn on this conversation's own session."""
        return drive(self.turn_steps(), self.session)

    def turn_steps(self) -> Generator[list[int], np.ndarray, Turn]:
        """The turn as a coroutine: yields ids to decode, receives the last position's logits.

        ``next_turn`` drives it on one session; ``batch.run_batched`` drives many at once
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
        rejected: list[dict] = []
        decoded = 0
        earlier = conv.user_turns()
        for attempt in range(sim.guardrails.max_retries + 1):
            if attempt:
                self.session.trim(len(self.session.tokens) - start)
            p_end = None

            def watch(so_far: list[int], raw: np.ndarray) -> None:
                nonlocal p_end
                if not so_far or so_far == [ids.newline]:  # first content position
                    p_end = prob_of(raw, ids.end_conversation)

            turn = yield from decode_steps(logits, sampler=sim.sampler, rng=self.rng, processors=sim.processors,
                                           stop_ids=ids.stop_ids, max_tokens=sim.max_new_tokens, watch=watch)
            decoded += len(turn) - 1  # every sampled id but the last was fed back
            stop = turn[-1] if turn[-1] in ids.stop_ids else None
            body = turn[:-1] if stop is not None else turn
            text = sim.fmt.tokenizer.decode(body)
            text = text[1:] if text.startswith("\n") else text
            ended = stop == ids.end_conversation
            if stop is not None and not ended and not text.strip():
                # an empty turn means the user is done, unless termination is banned
                ended = not sim.guardrails.end_token_ban
                reason = None if ended else "empty_turn"
            else:
                reason = None if ended else check(sim.guardrails, text, conv.intent, earlier)
            if reason is None:
                break
            rejected.append({"text": text, "reason": reason})
        t2 = time.perf_counter()
        usage = {"cached_tokens": cached, "prefill_tokens": len(new), "decode_tokens": decoded,
                 "seconds": round(t2 - t0, 6), "prefill_seconds": round(t1 - t0, 6), "decode_seconds": round(t2 - t1, 6)}
        if reason is not None:
            return Turn(text="", token_ids=[], ended=False, p_end=p_end, outcome=EXHAUSTED,
                        rejected=rejected, usage=usage)
        if ended:
            conv.end(turn if stop == ids.end_conversation else body)
        else:
            conv.add_user(ids=body)
        return Turn(text=text, token_ids=body, ended=ended, p_end=p_end, outcome=ENDED if ended else OK,
                    truncated=stop is None, rejected=rejected, usage=usage)
