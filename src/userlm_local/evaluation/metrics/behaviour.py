"""The bench's metrics, each a function of a set of items (conversations or intents) that a
paired bootstrap can resample: ``BEHAVIOUR[name] = Spec(unit, fn, tolerance, what)`` and
``behaviour_items(run)`` giving every metric's items for one model's run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...data.text import words
from .decomposition import turn_overlap
from .diversity import jaccard_matrix
from .termination import best_f1, roc_auc

END = "<|endconversation|>"


def _ratio(data, idx) -> float:
    num, den = data[idx, 0].sum(), data[idx, 1].sum()
    return float(num / den) if den else float("nan")


def _percent(data, idx) -> float:
    return 100.0 * _ratio(data, idx)


def _ppl(data, idx) -> float:
    n = data[idx, 1].sum()
    return math.exp(-data[idx, 0].sum() / n) if n else float("nan")


def _probes(data, idx):
    scores = [p for i in idx for p in data[i][0]]
    labels = [e for i in idx for e in data[i][1]]
    return scores, labels


def _auc(data, idx) -> float:
    return roc_auc(*_probes(data, idx))


def _f1(data, idx) -> float:
    s, y = _probes(data, idx)
    return best_f1(s, y)[0] if any(y) else float("nan")


def _p_end(label: bool):
    def fn(data, idx) -> float:
        vals = [p for p, e in zip(*_probes(data, idx)) if e == label]
        return float(np.mean(vals)) if vals else float("nan")
    return fn


class FirstTurns:
    """Pairwise Jaccard of every conversation's first turn, and which conversations each
    intent (the resampled item) has."""

    def __init__(self, texts: list[str], groups: list[list[int]]):
        self.jac, self.groups = jaccard_matrix(texts), groups

    def __len__(self) -> int:
        return len(self.groups)


def _diversity(data: FirstTurns, items) -> float:
    """100 x (1 - mean Jaccard over pairs of distinct conversations) of the resampled intents' first turns."""
    idx = np.asarray([c for i in items for c in data.groups[i]])
    sub = data.jac[np.ix_(idx, idx)]
    mask = np.triu(idx[:, None] != idx[None, :], k=1)
    return float(100.0 * (1.0 - sub[mask].mean())) if mask.any() else float("nan")


@dataclass(frozen=True)
class Spec:
    unit: str  # "conversation" (held-out scoring) | "intent" (the seeded campaign)
    fn: Callable
    tolerance: float | None  # None: reported, no verdict
    what: str
    relative: bool = False  # tolerance as a fraction of REF's value


BEHAVIOUR = {
    "ppl_with_intent": Spec("conversation", _ppl, 0.05, "user-turn perplexity with intent", relative=True),
    "ppl_without_intent": Spec("conversation", _ppl, 0.05, "user-turn perplexity without intent", relative=True),
    "p_end_at_ends": Spec("conversation", _p_end(True), None, "mean P(end) at true conversation ends"),
    "p_end_elsewhere": Spec("conversation", _p_end(False), None, "mean P(end) at other turn boundaries"),
    "termination_auc": Spec("conversation", _auc, 0.05, "termination ROC AUC"),
    "termination_best_f1": Spec("conversation", _f1, 0.05, "termination best F1"),
    "first_turn_diversity": Spec("intent", _diversity, 3.0, "first-turn diversity (100 x (1 - Jaccard))"),
    # informational: at +-3 points it needed ~820 conversations to decide (issue 24's recorded run), far
    # past a laptop's bench, and a looser tolerance would not tell a real change from none
    "intent_decomposition": Spec("intent", lambda d, i: 100.0 * _ratio(d, i), None,
                                 "intent decomposition (% of turn words from the intent)"),
    "mean_user_turns": Spec("intent", _ratio, 0.5, "user turns per conversation"),
    "share_ended_by_user": Spec("intent", _ratio, 0.10, "share of conversations the user ended"),
    "share_ended_expected": Spec("intent", _ratio, 0.10,
                                 "share the user ended, expected from P(end) at each turn reached (lower variance)"),
    "mean_words_per_turn": Spec("intent", _ratio, 2.0, "words per user turn"),
    # informational: what the guardrails cost, not what the user says (a redrawn draft never reaches the
    # transcript; exhausted redraws end a conversation, which user turns and share ended gate), and at
    # +-0.05 a laptop cannot decide it for the shipped Q8_0: its 90% interval at 128 intents was
    # +-0.04-0.05 wide in four recorded runs, two decided and two needed 353 and 561 intents, more than
    # the 217 held-out conversations that fit in 1,024 tokens
    "guardrail_redraw_rate": Spec("intent", _ratio, None, "redrawn drafts per draft (the guardrails' length and repeat checks)"),
    # the simulation-robustness half (spec §3.2 (4)-(6)); the paper's rows differ by tens of points
    # (UserLM-8b 93.95 / 94.65 vs GPT-4o 38.85 / 70.95), so a change under 10 points moves no model across them
    "role_adherence": Spec("role probe", _percent, 10.0, "role adherence (% of role probes the user did not answer itself)"),
    # informational: one probe per open question among the held-out first turns, and the held-out set
    # has 92; at +-10 points an equivalence test needs ~180 probes even when nothing changed (paired
    # spread ~54 points per probe, Q8_0 vs F16 of the default UserLM) and ~1,391 at Q8_0's observed
    # +6.8 (issue 24's 217-intent run), while the +-20 that 92 probes can reach would pass a model that
    # fell most of the way from UserLM-8b (94.65) to prompted GPT-4o (70.95), the paper's whole gap
    "intent_adherence": Spec("intent probe", _percent, None,
                             "intent adherence (% of replies that go on and return to the question; lexical judge)"),
    "naturalness_proxy": Spec("intent", _percent, 5.0,
                              "naturalness (proxy): mean P(human-written) x 100 of first turns, our detector, any length"),
}


def user_turns(record: dict) -> list[str]:
    return [m["content"] for m in record["messages"]
            if m["role"] == "user" and m["content"] not in ("", END)]


def behaviour_items(run) -> dict[str, dict]:
    """{unit: {metric: items}} for one ``preservation.ModelRun``."""
    conv = {
        "ppl_with_intent": np.array([c.totals("with_intent") for c in run.scores], dtype=np.float64),
        "ppl_without_intent": np.array([c.totals("without_intent") for c in run.scores], dtype=np.float64),
    }
    probes = [c.termination() for c in run.scores]
    for k in ("p_end_at_ends", "p_end_elsewhere", "termination_auc", "termination_best_f1"):
        conv[k] = probes
    recs = run.records
    turns = [user_turns(r) for r in recs]
    firsts = [t[0] if t else "" for t in turns]
    rejected = [sum(len(m.get("rejected") or []) for m in r["messages"] if m["role"] == "user") for r in recs]
    order = list(dict.fromkeys(r["intent_id"] for r in recs))
    groups = [[k for k, r in enumerate(recs) if r["intent_id"] == i] for i in order]
    intent = {
        "first_turn_diversity": FirstTurns(firsts, groups),
        "intent_decomposition": np.array([(sum(turn_overlap(r["intent"], t) for t in ts), len(ts))
                                          for r, ts in zip(recs, turns)], dtype=np.float64),
        "mean_user_turns": np.array([(len(ts), 1) for ts in turns], dtype=np.float64),
        "share_ended_by_user": np.array([(r["ended_by"] == "user", 1) for r in recs], dtype=np.float64),
        # a conversation ends at most once, so E[ended] = E[sum over the turns reached of P(end) there]
        "share_ended_expected": np.array([(sum(m.get("p_end") or 0.0 for m in r["messages"] if m["role"] == "user"), 1)
                                          for r in recs], dtype=np.float64),
        "mean_words_per_turn": np.array([(sum(len(words(t)) for t in ts), len(ts)) for ts in turns],
                                        dtype=np.float64),
        "guardrail_redraw_rate": np.array([(rj, rj + sum(1 for m in r["messages"] if m["role"] == "user"))
                                           for r, rj in zip(recs, rejected)], dtype=np.float64),
    }
    intent["naturalness_proxy"] = np.array([(p or 0.0, p is not None) for p in run.p_human], dtype=np.float64)
    for name, arr in intent.items():  # one row per intent: the sums over its conversations
        if isinstance(arr, np.ndarray):
            intent[name] = np.array([arr[g].sum(axis=0) for g in groups], dtype=np.float64).reshape(-1, 2)
    role = [(ok, 1) for ok in run.role_ok]
    going = [(ok and on, on) for ok, on in run.intent_ok]  # a user who ends neither returns nor strays
    return {"conversation": conv, "intent": intent,
            "role probe": {"role_adherence": np.array(role, dtype=np.float64).reshape(-1, 2)},
            "intent probe": {"intent_adherence": np.array(going, dtype=np.float64).reshape(-1, 2)}}


def ref_summary(run) -> dict:
    """REF's own values of every metric (for the report's first column)."""
    items = behaviour_items(run)
    out = {}
    for name, spec in BEHAVIOUR.items():
        data = items[spec.unit][name]
        out[name] = float(spec.fn(data, np.arange(len(data))))
    return {"metrics": out, "examples": [user_turns(r)[:2] for r in run.records[:3]]}
