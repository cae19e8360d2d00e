"""From two runs to verdicts: the token gates three ways, how alike the campaigns came out
(coupling), and the one line a person reads first.  The statistics are
``metrics.equivalence``; ``preservation.compare`` assembles a candidate's report from these."""

from __future__ import annotations

import numpy as np

from .metrics.behaviour import user_turns
from .metrics.equivalence import ALPHA, DEGRADED, INCONCLUSIVE, PRESERVED, Bootstrap


def one_sample(fn, data, n_boot: int, rng: np.random.Generator) -> Bootstrap:
    """The bootstrap of ``fn`` over items resampled with replacement (a token gate's statistic)."""
    n = len(data)
    idx_all = np.arange(n)
    observed = float(fn(data, idx_all))
    diffs = np.array([fn(data, rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64) \
        if n > 1 else np.zeros(0)
    jack = np.array([fn(data, np.delete(idx_all, i)) for i in range(n)], dtype=np.float64) if n > 1 else np.zeros(0)
    return Bootstrap.of(observed, diffs, jack)


def gate(b: Bootstrap, bound: float, *, at_most: bool, alpha: float = ALPHA) -> tuple[str, list[float]]:
    """A token gate, three ways: pass when the 90% interval lies on the right side of ``bound``,
    fail when it lies wholly on the wrong side, undecided when it straddles it."""
    lo, hi = b.interval(1 - 2 * alpha)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE, [lo, hi]
    ok, bad = (hi <= bound, lo > bound) if at_most else (lo >= bound, hi < bound)
    return (PRESERVED if ok else DEGRADED if bad else INCONCLUSIVE), [lo, hi]


def coupling(ref, cand, tokenize) -> dict:
    """How alike the two campaigns came out: the share of conversations whose user turns are
    identical, and over the others, the user-turn tokens before the first one that differs."""
    theirs = {(r["intent_id"], r["trial"]): r for r in cand.records}
    same, to_divergence = 0, []
    for r in ref.records:
        c = theirs.get((r["intent_id"], r["trial"]))
        if c is None:
            continue
        a, b = user_turns(r), user_turns(c)
        if a == b and r["ended_by"] == c["ended_by"]:
            same += 1
            continue
        ta, tb = tokenize("\n".join(a)), tokenize("\n".join(b))
        to_divergence.append(next((k for k, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb))))
    n = same + len(to_divergence)
    return {"identical_share": same / n if n else None,
            "mean_tokens_to_divergence": float(np.mean(to_divergence)) if to_divergence else None,
            "conversations": n}


def end_flip_rate(ref, cand) -> float | None:
    """Teacher-forced, the mean |P_REF(end) - P_CAND(end)| over every termination probe: the chance
    that REF and CAND, drawing from the same coupled noise, take different end/continue decisions."""
    diffs = [abs(a - b) for rs, cs in zip(ref.scores, cand.scores)
             for a, b in zip(rs.termination()[0], cs.termination()[0])]
    return float(np.mean(diffs)) if diffs else None


LOOK_FURTHER = "run with a larger --limit"


def look_line(r: dict, upto: int) -> str:
    """Where a candidate stands after a look of ``upto`` conversations: what is decided, and what is
    still open with the intents or conversations it needs (a long ``--until-decided`` run says this
    after every look, not only at its end)."""
    judged = {**r["gates"], **{k: m for k, m in r["metrics"].items() if m["verdict"] != "info"}}
    bad = [k for k, m in judged.items() if m["verdict"] == DEGRADED]
    open_ = [f"{k} (~{m['n_needed']} {m['paired_by']}s)" if m.get("n_needed") else k
             for k, m in judged.items() if m["verdict"] == INCONCLUSIVE]
    line = f"{r['label']} after {upto}: {r['verdict']}, {len(judged) - len(open_)} of {len(judged)} decided"
    return line + (f", degraded: {', '.join(bad)}" if bad else "") + (f"; undecided: {', '.join(open_)}" if open_ else "")


def more_data(used: int, wanted: int, *, until_decided: bool, max_len: int) -> str:
    """What a person can do about an undecided candidate: look further, or, when the data holds no
    more conversations that fit (``used`` < ``wanted``), bring more; a larger limit would change nothing."""
    if used < wanted:
        return (f"the data holds no more conversations that fit in {max_len} tokens ({used} used): "
                "add some with --data-file")
    return "run with a larger --max-intents" if until_decided else "run with --until-decided or a larger --limit"


def headline(label: str, verdict: str, gates: dict, metrics: dict, advice: str = LOOK_FURTHER) -> str:
    """The one line a person reads first; ``advice`` ends an inconclusive one (``more_data``)."""
    if verdict == PRESERVED:
        return f"{label}: preserved: every metric within its tolerance, token gates passed"
    if verdict == DEGRADED:
        bad = [k for k, g in gates.items() if g["verdict"] == DEGRADED] + \
              [k for k, m in metrics.items() if m["verdict"] == DEGRADED]
        return f"{label}: degraded: {', '.join(bad)} outside the tolerance"
    open_ = [(m.get("n_needed"), k, m) for k, m in metrics.items() if m["verdict"] == INCONCLUSIVE]
    worst = max(open_, key=lambda t: (t[0] is None, t[0] or 0), default=None)
    if worst is None:
        return f"{label}: inconclusive: the token gates are undecided; {advice}"
    n, k, m = worst
    need = f"needs ~{n} {m['paired_by']}s" if n is not None else "sits on its tolerance"
    more = f" (and {len(open_) - 1} more undecided)" if len(open_) > 1 else ""
    return f"{label}: inconclusive: {m['what']} {need}{more}; {advice}"
