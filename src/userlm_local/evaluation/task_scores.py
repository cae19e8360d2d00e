"""``eval``'s numbers, from its records: the task score with a bootstrap interval over tasks, the
single-turn baseline and the paired multi-turn drop, turns to success, and the simulated users'
Table 3 properties (``metrics.task_simulation``).

A task's score is the share of its trials that succeeded; the score is their mean over tasks, in
percent.  Intervals are 95% percentile bootstraps over tasks (the unit that was sampled), the drop's
paired: the same resampled tasks on both sides, i.e. the bootstrap of the per-task differences."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .metrics.bootstrap import interval
from .metrics.task_simulation import intent_coverage, turn_spread, unigram_difference
from .tasks import Task

LEVEL = 0.95
CHUNK = 1000  # resamples drawn at once


def bootstrap_mean(values, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``values`` (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    means = np.concatenate([v[rng.integers(0, v.size, size=(min(CHUNK, n_boot - i), v.size))].mean(axis=1)
                            for i in range(0, n_boot, CHUNK)])
    return interval(means, LEVEL, n_boot)


def _pct(x: float) -> float:
    return round(100.0 * x, 4)


def _stat(values, n_boot, rng) -> dict:
    lo, hi = bootstrap_mean(values, n_boot, rng)
    return {"value": _pct(float(np.mean(values))) if len(values) else None, "interval": [_pct(lo), _pct(hi)],
            "level": LEVEL}


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 4) if xs else None


def user_side(record: dict) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "user" and m.get("content")]


def summarize(tasks: list[Task], records: list[dict], baseline: list[dict] | None, *, trials: int, seed: int,
              max_turns: int, n_boot: int = 10_000) -> dict:
    """Every number of the report; ``records`` / ``baseline`` hold one record per (task, trial)."""
    rng = np.random.default_rng(seed)
    keys = {(t.id, k) for t in tasks for k in range(trials)}
    by = {(r["intent_id"], r["trial"]): r for r in records if r["seed"] == seed and (r["intent_id"], r["trial"]) in keys}
    base = {(r["intent_id"], r["trial"]): r for r in (baseline or [])
            if r["seed"] == seed and (r["intent_id"], r["trial"]) in keys}
    per_task, sim, single, turns_ok, coverage, attempts, replies = [], [], [], [], [], 0, 0
    checks, ended = Counter(), Counter()
    for t in tasks:
        recs = [by[(t.id, k)] for k in range(trials)]
        wins = [bool(r["eval"]["success"]) for r in recs]
        n_user = [r["eval"]["user_turns"] for r in recs]
        cov = [intent_coverage(t.problem, user_side(r)) for r in recs]
        spread = turn_spread(n_user)
        row = {"id": t.id, "score": _pct(np.mean(wins)), "successes": sum(wins), "trials": trials,
               "turns_to_success": [r["eval"]["turns_to_success"] for r in recs], "user_turns": n_user,
               "turn_variance": None if spread is None else round(spread[0], 4),
               "turn_range": None if spread is None else spread[1],
               "unigram_difference": _round(unigram_difference([" ".join(user_side(r)) for r in recs])),
               "intent_coverage": _round(None if any(c is None for c in cov) else 100 * float(np.mean(cov)))}
        for r in recs:
            ended[r["ended_by"]] += 1
            replies += r["eval"]["replies"]
            attempts += len(r["eval"]["attempts"])
            checks.update(a["status"] for a in r["eval"]["attempts"])
            if r["eval"]["success"]:
                turns_ok.append(r["eval"]["turns_to_success"])
        coverage += [c for c in cov if c is not None]
        sim.append(float(np.mean(wins)))
        if baseline is not None:
            b = [bool(base[(t.id, k)]["eval"]["success"]) for k in range(trials)]
            row["single_turn"] = _pct(np.mean(b))
            single.append(float(np.mean(b)))
        per_task.append(row)
    n_conv = len(tasks) * trials
    hist = Counter(turns_ok)
    out = {
        "n_tasks": len(tasks), "trials": trials, "conversations": n_conv, "max_turns": max_turns,
        "score": _stat(sim, n_boot, rng),
        "turns_to_success": {"mean": _mean(turns_ok), "median": float(np.median(turns_ok)) if turns_ok else None,
                             "histogram": {str(k): hist.get(k, 0) for k in range(1, max_turns + 1)},
                             "solved_by_turn": [_pct(sum(hist.get(j, 0) for j in range(1, k + 1)) / n_conv)
                                                for k in range(1, max_turns + 1)]},
        "simulation": {
            "turn_variance": _mean(r["turn_variance"] for r in per_task),
            "turn_range": _mean(r["turn_range"] for r in per_task),
            "unigram_difference": _mean(r["unigram_difference"] for r in per_task),
            "intent_coverage": _round(100 * float(np.mean(coverage)) if coverage else None),
            "user_turns_mean": _mean(n for r in per_task for n in r["user_turns"]),
            "note": "turn variance, range and unigram difference need 2 or more trials per task; intent coverage is "
                    "a lexical proxy (a sentence or example of the problem counts as revealed when half its content "
                    "words appear in the user's turns)"},
        "replies": replies, "attempts": attempts, "checks": dict(sorted(checks.items())),
        "ended_by": dict(sorted(ended.items())),
        "seconds_per_conversation": _mean(r["usage"].get("seconds") for r in by.values()),
        "tasks": per_task,
    }
    if baseline is not None:
        out["single_turn"] = _stat(single, n_boot, rng)
        out["drop"] = _stat(np.asarray(single) - np.asarray(sim), n_boot, rng)
        out["single_turn"]["seconds_per_task"] = _mean(r["usage"].get("seconds") for r in base.values())
        out["single_turn"]["checks"] = dict(sorted(Counter(r["eval"]["status"] for r in base.values()).items()))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
