"""A simulated user for other programs: give it an OpenAI-format message list (and an intent), get
the next user turn back.

    from userlm_local import SimulatedUserModel
    user = SimulatedUserModel()                      # the default UserLM; or a path, 'tiny', a URL
    reply = user.next_turn(messages, intent="You are a user chatting with ... to ...", conversation="c1")
    reply.text, reply.ended, reply.p_end, reply.usage

One object serves many conversations at once (threads, or ``await user.anext_turn(...)``): local
models run every conversation's decode steps on one engine (``runtime.scheduler``), and a
conversation named by ``conversation=`` keeps its KV cache between calls, so a call whose history
only grew decodes only what is new.  Each conversation's randomness is keyed by (seed, its name,
the turn's place), so a turn is reproducible whatever runs beside it."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from ..defaults import resolve_user_model
from ..runtime.backends import load_backend, load_options
from ..runtime.sampling import Noise, preset, rng_for
from ..runtime.scheduler import Scheduler
from ..simulation.build import is_url, open_user_model
from ..simulation.guardrails import Guardrails
from ..simulation.remote_user import RemoteSimulatedUser, simulator_for
from ..simulation.user import EXHAUSTED, SimulatedUser
from ..text.conversation import USER, Conversation
from ..util.errors import UserError


@dataclass
class UserReply:
    text: str  # the user's turn ('' when it ended the conversation)
    ended: bool  # the user ended the conversation (<|endconversation|>)
    p_end: float | None  # P(<|endconversation|>) at the turn's first content position
    usage: dict = field(default_factory=dict)  # prefill, cached and decoded tokens, seconds
    rejected: list = field(default_factory=list)  # drafts the guardrails refused
    exhausted: bool = False  # every draft was refused: no turn


class SimulatedUserModel:
    def __init__(self, model: str | None = None, *, tokenizer: str | None = None, sampling: str = "paper",
                 guardrails: str = "none", max_new_tokens: int = 96, seed: int = 0, n_ctx: int = 4096,
                 parallel: int = 8, max_conversations: int = 64, threads: int | None = None):
        if max_conversations < 1 or parallel < 1:
            raise UserError("max_conversations and parallel must be at least 1")
        self.seed, self.max_conversations = seed, max_conversations
        user = model if is_url(model) else str(resolve_user_model(model))
        self.guardrails = Guardrails.named(guardrails)
        self.model = open_user_model(user, tokenizer=tokenizer, sampling=preset(sampling), guardrails=self.guardrails,
                                     max_new_tokens=max_new_tokens,
                                     load=lambda p: load_backend(p, **load_options(p, n_ctx=n_ctx, n_seq_max=parallel,
                                                                                   threads=threads)))
        self.sim = simulator_for(self.model, sampling=preset(sampling), guardrails=self.guardrails,
                                 max_new_tokens=max_new_tokens)
        self.fmt = self.model.fmt
        self.scheduler = None if self.sim.remote else Scheduler(self.model)
        self.sessions: OrderedDict = OrderedDict()  # conversation name -> its session (KV cache), LRU
        self.busy: set = set()
        self.lock = threading.Lock()

    def conversation(self, messages: list[dict], intent: str | None) -> Conversation:
        """The UserLM conversation of ``messages`` (OpenAI format, roles as the user model sees them:
        its own turns 'user'); ``intent`` replaces a system message."""
        body = [m for m in messages if m.get("role") != "system"] if intent is not None else list(messages)
        msgs = ([{"role": "system", "content": intent}] if intent is not None else []) + body
        conv = Conversation.from_messages(self.fmt, msgs)
        if conv.state != USER:
            raise UserError("the last message must be the assistant's (or only the intent): the user speaks next")
        return conv

    def next_turn(self, messages: list[dict], intent: str | None = None, *, conversation: str | None = None) -> UserReply:
        conv = self.conversation(messages, intent)
        name = conversation or hashlib.sha256(repr((conv.intent, messages[:2])).encode()).hexdigest()[:16]
        with self.lock:
            if name in self.busy:
                raise UserError(f"conversation {name!r} is already asking for a turn")
            self.busy.add(name)
            session = self.sessions.pop(name, None)
        try:
            if self.scheduler is None:
                user = RemoteSimulatedUser(self.model, conv, rng_for(self.seed, name, len(conv.user_turns())))
                turn = user.next_turn()
            else:
                session = session or self.scheduler.call(self.model.new_session)
                user = SimulatedUser(self.sim, conv, session, Noise.for_(self.seed, name))
                try:
                    turn = self.scheduler.next_turn(user)
                except BaseException:  # a refused turn (context full): its sequence goes back, not leaked
                    self.scheduler.call(session.close)
                    raise
                self._keep(name, session)
        finally:
            with self.lock:
                self.busy.discard(name)
        return UserReply("" if turn.ended or turn.outcome == EXHAUSTED else turn.text, turn.ended, turn.p_end,
                         dict(turn.usage), list(turn.rejected), turn.outcome == EXHAUSTED)

    async def anext_turn(self, messages: list[dict], intent: str | None = None, *,
                         conversation: str | None = None) -> UserReply:
        return await asyncio.to_thread(self.next_turn, messages, intent, conversation=conversation)

    def forget(self, conversation: str) -> None:
        """Free a finished conversation's KV cache."""
        with self.lock:
            session = self.sessions.pop(conversation, None)
        if session is not None:
            self.scheduler.call(session.close)

    def _keep(self, name: str, session) -> None:
        with self.lock:
            self.sessions[name] = session
            old = [self.sessions.popitem(last=False)[1] for _ in range(len(self.sessions) - self.max_conversations)]
        for s in old:  # the least recently used conversations give their KV cache back
            self.scheduler.call(s.close)

    def close(self) -> None:
        if self.scheduler is not None:
            for s in list(self.sessions.values()):
                self.scheduler.call(s.close)
            self.sessions.clear()
            self.scheduler.close()
        self.model.close()

    def __enter__(self) -> "SimulatedUserModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
