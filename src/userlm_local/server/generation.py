"""One choice of one request: the step coroutine the engine's scheduler runs, turning each sampled
token into a streamed ``Piece`` and, at the end, a ``Choice``; and the slot protocol that gives a
session back only once the engine has let go of it.  ``model`` is the ``engine.ModelService``."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..runtime.decode import decode_steps, sync_session
from ..runtime.sampling import Noise, SamplingParams, make_sampler
from ..text.detokenize import IncrementalDecoder
from .requests import Params


@dataclass
class TokenInfo:
    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]]


@dataclass
class Piece:
    """What one sampled token adds to a choice (``text`` may be empty: a partial UTF-8 character,
    or text held back because it could begin a stop string)."""

    index: int
    text: str
    info: TokenInfo | None = None


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenInfo] = field(default_factory=list)
    sampled: int = 0  # ids sampled, a stop id included (the usage's completion tokens)


class Cancelled(Exception):
    """The request was given up (its client left) before this choice was submitted."""


class Generation:
    """One choice: the step coroutine and what it has produced so far."""

    def __init__(self, model, prompt: list[int], params: Params, index: int,
                 emit: Callable[[Piece], None], cancelled: threading.Event, *, strip_newline: bool,
                 release: Callable[[], None]):
        self.model, self.prompt, self.params, self.emit = model, prompt, params, emit
        self.cancelled = cancelled
        self.choice = Choice(index)
        self.strip_newline = strip_newline  # a UserLM's turn starts with '\n', not part of the content
        self.sent = 0  # characters of the text already emitted
        self.decoded = ""
        self.detok = IncrementalDecoder(model.tokenizer, skip_special=True)
        self.stop_ids = model.stop_ids | frozenset(params.stop_token_ids)
        # The session slot is given back once the engine has let go of this choice's session
        # (its sequence freed), never earlier: a cancelled future's callback used to free the
        # slot while the engine still held the sequence, and the next request was refused with
        # "all sequences of this llama.cpp context are in use".
        self.slot_lock, self.slot = threading.Lock(), "waiting"  # -> "open" (engine) | "abandoned"
        self.release = release  # gives the slot back

    def open_session(self):
        """The session, opened on the engine thread, unless the request was abandoned first."""
        with self.slot_lock:
            if self.slot == "abandoned":
                raise RuntimeError("the request was cancelled before it started")
            self.slot = "open"
        try:
            return self.model.backend.new_session()
        except BaseException:
            self.release()
            raise

    def abandon(self) -> None:
        """The future is done (a result, an error or a cancel): give the slot back here only if the
        engine never opened a session for it (then nobody else will)."""
        with self.slot_lock:
            if self.slot != "waiting":
                return
            self.slot = "abandoned"
        self.release()

    def steps(self, session):
        model, p = self.model, self.params
        try:
            new, _ = sync_session(session, self.prompt)
            logits = yield new
            sampler = make_sampler(SamplingParams(temperature=p.temperature, top_p=p.top_p))
            seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little")
            processors = [model.bias(p.logit_bias)] if p.logit_bias else []
            # keyed by (seed, choice) and the id's place in the sequence: a request that continues
            # an earlier one's output (prompt + what it sampled) draws what one longer request would
            yield from decode_steps(logits, sampler=sampler, noise=Noise.for_(seed, self.choice.index),
                                    first_position=len(self.prompt), processors=processors, stop_ids=self.stop_ids,
                                    max_tokens=self.max_tokens(), on_token=self.on_token)
            return self.finish()
        finally:
            session.close()
            self.release()  # the sequence is free: now the slot is

    def max_tokens(self) -> int:
        room = self.model.context_length - len(self.prompt)
        return min(self.params.max_tokens or room, room)

    def on_token(self, token: int, logits: np.ndarray) -> bool:
        c = self.choice
        c.sampled += 1
        if token in self.stop_ids:
            c.finish_reason = "end_conversation" if token == self.model.end_conversation else "stop"
            if self.params.logprobs:  # the stop id's own log-probability (a client may want P(end))
                c.logprobs.append(self.model.token_info(token, logits, self.params.top_logprobs,
                                                        self.params.tokens_as_ids))
            self.detok.flush()
            self._text()
            self._flush(final=True)
            return True
        c.token_ids.append(token)
        info = (self.model.token_info(token, logits, self.params.top_logprobs, self.params.tokens_as_ids)
                if self.params.logprobs else None)
        if info is not None:
            c.logprobs.append(info)
        self.detok.push(token)
        text = self._text()
        for s in self.params.stop:
            at = text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.decoded = text[:at]
                c.finish_reason = "stop"
                self._flush(final=True, info=info)
                return True
        if self.cancelled.is_set():
            c.finish_reason = "cancelled"
            return True
        self._flush(final=False, info=info)
        return False

    def _text(self) -> str:
        """The reply's text so far (a UserLM's leading newline dropped), kept in ``decoded``."""
        text = self.detok.text
        if self.strip_newline and text.startswith("\n"):
            text = text[1:]
        self.decoded = text
        return text

    def _flush(self, *, final: bool, info: TokenInfo | None = None) -> None:
        text = self.decoded
        end = len(text)
        if not final:  # (an incomplete character is held back by the decoder)
            for s in self.params.stop:  # hold back what could begin a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        end = max(end, self.sent)
        piece = text[self.sent:end]
        self.sent = end
        if piece or info is not None:
            self.emit(Piece(self.choice.index, piece, info))

    def finish(self) -> Choice:
        c = self.choice
        if c.finish_reason is None:
            c.finish_reason = "length"
            self.detok.flush()
            self._text()
            self._flush(final=True)
        c.text = self.decoded
        return c
