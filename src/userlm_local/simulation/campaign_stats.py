"""A campaign's running counts (``Stats``): conversations, tokens, and where the time went."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


def add_known(total: float | None, more: float | None) -> float | None:
    """A sum that becomes unknown (None) once one of its terms is."""
    return None if total is None or more is None else total + more


@dataclass
class Stats:
    done: int = 0
    skipped: int = 0
    turns: int = 0
    user_tokens: int = 0
    cached: int = 0
    prefilled: int = 0
    ended_by: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    long_warned: bool = False
    # where the time went: seconds inside the user model's turns (prefill / decode where the
    # model is local) and inside the assistant's replies, and what each produced in them
    user_decoded: int = 0
    user_seconds: float = 0.0
    user_prefill_seconds: float | None = 0.0  # None: a remote user model (not split)
    user_decode_seconds: float | None = 0.0
    assistant_seconds: float = 0.0
    assistant_usage: dict | None = field(default_factory=dict)  # summed usage; None once one is unknown
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_record(self, usage: dict) -> None:
        """Count a record's usage whose turns were run elsewhere (a Ray actor)."""
        with self.lock:
            self.user_tokens += usage["decode_tokens"]
            self.cached += usage["cached_tokens"]
            self.prefilled += usage["prefill_tokens"]
            self.user_decoded += usage["decode_tokens"]
            self.user_seconds += usage.get("user_seconds") or 0.0
            self.user_prefill_seconds = add_known(self.user_prefill_seconds, usage.get("prefill_seconds"))
            self.user_decode_seconds = add_known(self.user_decode_seconds, usage.get("decode_seconds"))
        self.add_assistant(usage.get("assistant"), usage.get("assistant_seconds") or 0.0)

    def add_assistant(self, usage: dict | None, seconds: float) -> None:
        """One conversation's assistant: ``seconds`` inside its replies, and their usage summed."""
        with self.lock:
            self.assistant_seconds += seconds
            if usage is None or self.assistant_usage is None:
                self.assistant_usage = None
                return
            for k, v in usage.items():
                cur = self.assistant_usage.get(k, 0)
                self.assistant_usage[k] = None if v is None or cur is None else cur + v

    def timing(self, wall: float) -> dict:
        """Rates measured while each side was working, and the wall time's split."""
        rate = lambda n, sec: round(n / sec, 1) if n is not None and sec else None  # noqa: E731
        a = self.assistant_usage or {}
        user = {"seconds": round(self.user_seconds, 2), "prefill_tokens": self.prefilled,
                "decode_tokens": self.user_decoded,
                "prefill_seconds": None if self.user_prefill_seconds is None else round(self.user_prefill_seconds, 2),
                "decode_seconds": None if self.user_decode_seconds is None else round(self.user_decode_seconds, 2),
                "prefill_tok_s": rate(self.prefilled, self.user_prefill_seconds),
                "decode_tok_s": rate(self.user_decoded, self.user_decode_seconds)}
        prompt_new = (a["prompt_tokens"] - a["cached_tokens"]) if a.get("cached_tokens") is not None and a else None
        asst = {"seconds": round(self.assistant_seconds, 2), "prompt_tokens": a.get("prompt_tokens"),
                "prefill_tokens": prompt_new, "completion_tokens": a.get("completion_tokens"),
                "prefill_seconds": None if a.get("prefill_seconds") is None else round(a["prefill_seconds"], 2),
                "decode_seconds": None if a.get("decode_seconds") is None else round(a["decode_seconds"], 2),
                "prefill_tok_s": rate(prompt_new, a.get("prefill_seconds")),
                "decode_tok_s": rate(a.get("completion_tokens"), a.get("decode_seconds")),
                # an endpoint or a script: tokens over the whole time of its replies
                "completion_tok_s": rate(a.get("completion_tokens"), self.assistant_seconds)}
        other = max(wall - self.user_seconds - self.assistant_seconds, 0.0)
        share = lambda x: round(x / wall, 3) if wall > 0 else None  # noqa: E731
        return {"wall_seconds": round(wall, 2), "user_model": user, "assistant": asst,
                "share": {"user_model": share(self.user_seconds), "assistant": share(self.assistant_seconds),
                          "other": share(other)}}

    def finished(self, record: dict) -> None:
        """Count a conversation written to the transcript."""
        with self.lock:
            self.done += 1
            self.ended_by[record["ended_by"]] = self.ended_by.get(record["ended_by"], 0) + 1
            if record["error"]:
                self.errors.append(f"{record['id']}: {record['error']}")
