"""The session protocol every backend implements.

::

    session = backend.new_session()
    session.tokens            # what the KV cache holds, exactly
    session.extend(ids)       # logits of the last position; decodes only ``ids``
    session.trim(n)           # drop the last n tokens from the KV cache
    session.close()
    backend.extend_many(work)  # several sessions' ids, one engine call where the engine can
    backend.logits(ids, start) # logits at every position from start on, in a scratch sequence
    backend.score(ids, start) # teacher-forced log-probs of ids[start:]
    backend.describe()        # {"format", "quant"}: what the transcripts and reports record
    backend.close()           # free the engine (a no-op where Python's GC does it)

Every backend derives from ``BackendBase``, which gives the optional parts their defaults, so
callers never probe a backend with ``hasattr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...text.prompt_format import ChatFormat
from ...util.errors import ContextFull
from ...artifacts.model_files import ModelInfo
from ...text.tokenizer import Tokenizer


@dataclass
class Usage:
    """Token counters of one session: what it decoded, and what it reused."""

    decoded: int = 0  # tokens fed through the model by extend()


class SessionBookkeeping:
    """What every session does around its engine call: check the ids fit, then record them.
    Subclasses set ``tokens``, ``usage`` and ``context_length``."""

    tokens: list[int]
    usage: Usage
    context_length: int

    def check_extend(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("extend() needs at least one token")
        if len(self.tokens) + len(ids) > self.context_length:
            raise ContextFull(f"the conversation needs {len(self.tokens) + len(ids)} tokens, more than "
                              f"this session's context of {self.context_length}")

    def record_extend(self, ids: list[int]) -> None:
        self.tokens += list(ids)
        self.usage.decoded += len(ids)

    def check_trim(self, n: int) -> int:
        """The number of tokens kept after trimming ``n``."""
        if n < 0 or n > len(self.tokens):
            raise ValueError(f"cannot trim {n} of {len(self.tokens)} tokens")
        return len(self.tokens) - n


class Session(Protocol):
    tokens: list[int]
    usage: Usage

    def check_extend(self, ids: list[int]) -> None: ...
    def extend(self, ids: list[int]) -> np.ndarray: ...
    def trim(self, n: int) -> int: ...
    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    path: str
    tokenizer: Tokenizer
    fmt: ChatFormat
    context_length: int

    info: ModelInfo | None

    def new_session(self) -> Session: ...
    def extend_many(self, work: list[tuple[Session, list[int]]]) -> list[np.ndarray]: ...
    def logits(self, ids: list[int], start: int = 0, positions: list[int] | None = None) -> np.ndarray: ...
    def score(self, ids: list[int], start: int, extra: int | None = None) -> Any: ...
    def describe(self) -> dict: ...
    @property
    def vocab_size(self) -> int: ...
    def close(self) -> None: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...
    def token_id(self, name: str) -> int | None: ...


class TokenizerMixin:
    """tokenize / detokenize / token_id on top of ``self.tokenizer``."""

    tokenizer: Tokenizer

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_id(self, name: str) -> int | None:
        return self.tokenizer.token_id(name)


class BackendBase(TokenizerMixin):
    """What a backend may leave out, with its default: one session at a time for ``extend_many``,
    the tokenizer's vocabulary, nothing to free on ``close``, no ``ModelInfo`` read at load."""

    info: ModelInfo | None = None

    def extend_many(self, work: list[tuple[Session, list[int]]]) -> list[np.ndarray]:
        return [session.extend(ids) for session, ids in work]

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size if self.info is not None else self.tokenizer.vocab_size

    def describe(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        pass
