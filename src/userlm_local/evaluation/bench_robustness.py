"""The bench's simulation-robustness half: each model's replies to the role and intent probes and the
naturalness (proxy) of its campaign's first turns, as per-item values ``metrics.behaviour`` pairs
across REF and CAND.  A probe's sampling noise is keyed by its index, so REF and CAND draw coupled
and a later look's slice draws as one long run would have."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .metrics.robustness import END, answers_own_question, returns_to_question
from .naturalness import Detector
from .probes import intent_probes, role_probes
from .robustness import SimulatorTurns, intent_replies, role_replies

detector = functools.cache(Detector)  # the shipped naturalness detector, loaded once per process


@dataclass
class Probes:
    """Every probe the bench may use (one per intent of the largest look), and how far this look goes."""

    role: list
    intent: list
    upto: int = 0

    @classmethod
    def build(cls, n: int, pool) -> Probes:
        """``n`` built-in role probes (role-probes-v1) and up to ``n`` intent probes from the open
        questions among the first turns of ``pool`` (held-out conversations)."""
        return cls(role_probes(n), intent_probes(n, dialogues=pool))


def probe_model(backend, probes: Probes, run, *, seed: int, max_new_tokens: int, progress: bool,
                concurrency: int = 1) -> None:
    """The next slice of each probe set, up to ``probes.upto``, one sampled reply each, appended to
    ``run.role_ok`` (the user did not answer its own question) and ``run.intent_ok`` (returned, went on);
    ``concurrency`` replies at once (at most the backend's sequences)."""
    turns = SimulatorTurns(backend, seed=seed, max_new_tokens=max_new_tokens, concurrency=concurrency)
    k = len(run.role_ok)
    role = probes.role[k:probes.upto]
    run.role_ok += [not answers_own_question(r, p.choices)
                 for p, r in zip(role, role_replies(turns, role, start=k, progress=progress))]
    k = len(run.intent_ok)
    intent = probes.intent[k:probes.upto]
    run.intent_ok += [(r != END and returns_to_question(r, p.question, p.suggestion), r != END)
                   for p, r in zip(intent, intent_replies(turns, intent, start=k, progress=progress))]


def first_turn_naturalness(records: list[dict]) -> list[float | None]:
    """P(human-written) of each record's first user turn, by the shipped detector (None: the user
    ended before saying anything).  Every length counts: the bench's turns are short, and the
    comparison is REF against CAND, not against the paper's 50-200-token rows."""
    firsts = [next((m["content"] for m in r["messages"] if m["role"] == "user"), "") for r in records]
    firsts = [t if t.strip() and t != END else None for t in firsts]
    kept = [t for t in firsts if t is not None]
    p = iter(detector().p_human(kept).tolist() if kept else [])
    return [None if t is None else next(p) for t in firsts]
