"""Extrinsic preservation (``bench REF CAND --extrinsic TASKS --assistant X``): does a converted
UserLM, as the simulated user, give the assistant the same task score as REF does?

Every model (REF and each CAND) runs the same evaluation as ``eval``: the same tasks, trials and
seed, against the same assistant (a script, or a model whose sampling is seeded per conversation),
under the paper's task guardrails, graded by the same sandboxed checks.  The project's sampler is
coupled (Gumbel-max noise keyed by seed, conversation, turn and position), so two models that agree
draw the same turns, and the assistant then sees the same messages: the conversations differ only
where the models do.  The outcomes are paired by (task, trial); the metric is the task score (% of
conversations solved, per task), and CAND - REF gets the bench's three-way verdict
(``metrics.equivalence.decide``): preserved inside +-``TOLERANCE`` points, degraded wholly outside,
inconclusive in between.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..simulation.build import CampaignSpec, build_campaign
from ..simulation.transcripts import MemorySink
from ..util.errors import UserError
from .extrinsic import EvalSink, wrap_campaign
from .metrics.bootstrap import paired_diffs
from .metrics.equivalence import (
    ALPHA,
    DEGRADED,
    INCONCLUSIVE,
    Bootstrap,
    combine,
    decide,
    jackknife,
)
from .sandbox import Limits, Sandbox
from .tasks import Task
from .verdicts import LOOK_FURTHER, headline

# Points of task score.  The paper's multi-turn drop (74.6% with GPT-4o as the user -> 57.4% with
# UserLM-8b, spec 3.3) is 17 points: a converted user that moves the score by under 10 keeps well
# inside the effect a user simulator exists to show.
TOLERANCE = 10.0
WHAT = "task score with this user (% solved; paired by task and trial)"


@dataclass
class ExtrinsicConfig:
    tasks: list[Task]
    tasks_name: str  # humaneval | the task file, as given
    assistant: str  # resolved: a model path, an OpenAI-compatible URL or script:FILE
    trials: int = 1
    max_turns: int = 8
    seed: int = 0
    max_new_tokens: int = 96
    assistant_max_tokens: int | None = None
    check_timeout: float = 10.0
    threads: int | None = None


def run_tasks(user: Path, cfg: ExtrinsicConfig, sandbox: Sandbox, *, assistant=None,
              progress: bool = True) -> tuple[dict, object]:
    """``eval``'s conversations of one UserLM against the assistant: ({(task, trial): record}, the
    assistant, to pass to the next model's run: one assistant, loaded once, for every model)."""
    from tqdm import tqdm

    spec = CampaignSpec(user=str(user), assistant=cfg.assistant, trials=cfg.trials, max_turns=cfg.max_turns + 1,
                        seed=cfg.seed, sampling="paper", guardrails="paper", max_new_tokens=cfg.max_new_tokens,
                        assistant_max_tokens=cfg.assistant_max_tokens, threads=cfg.threads,
                        # a local assistant decodes greedily: deterministic, whatever its card suggests
                        assistant_sampling={"temperature": 0.0} if _local(cfg.assistant) else {})
    campaign = build_campaign(spec, assistant)
    grading = wrap_campaign(campaign, cfg.tasks, sandbox, cfg.max_turns)
    sink = MemorySink()
    total = len(cfg.tasks) * cfg.trials
    bar = tqdm(total=total, desc=f"tasks {user.name}", unit="conv", file=sys.stderr, disable=not progress)
    try:
        campaign.run([t.intent for t in cfg.tasks], EvalSink(sink, grading, cfg.max_turns),
                     progress=lambda s: bar.update(s.done - bar.n))
    finally:
        bar.close()
        close = getattr(campaign.backend, "close", None)
        if close is not None:
            close()
    records = {(r["intent_id"], r["trial"]): r for r in sink.records}
    errors = [r for r in records.values() if r["ended_by"] == "error"]
    if errors:
        raise UserError(f"{user}: {len(errors)} task conversations ended in error (first: {errors[0]['error']})")
    if len(records) != total:
        raise UserError(f"{user}: the task evaluation finished {len(records)} of {total} conversations")
    return records, grading.inner


def success_items(records: dict, tasks: list[Task], trials: int) -> np.ndarray:
    """One row per task: (conversations solved, conversations), in the tasks' order."""
    return np.array([(sum(bool(records[(t.id, k)]["eval"]["success"]) for k in range(trials)), trials)
                     for t in tasks], dtype=np.float64)


def _score(data: np.ndarray, idx: np.ndarray) -> float:
    """The task score (%) of the resampled tasks."""
    return 100.0 * data[idx, 0].sum() / data[idx, 1].sum()


def compare_tasks(ref: dict, cand: dict, tasks: list[Task], trials: int, *, n_boot: int, seed: int = 0,
                  alpha: float = ALPHA, tolerance: float = TOLERANCE) -> dict:
    """CAND's task score against REF's, paired by (task, trial): the metric as the bench reports
    its others (value, 95% interval, the verdict's 90% interval, verdict), with the discordant pairs."""
    keys = [(t.id, k) for t in tasks for k in range(trials)]
    if any(k not in ref or k not in cand for k in keys):
        raise ValueError("extrinsic preservation pairs every (task, trial): both runs need all of them")
    r, c = success_items(ref, tasks, trials), success_items(cand, tasks, trials)
    rng = np.random.default_rng(seed)
    value_ref, value_cand, diffs = paired_diffs(_score, r, c, n_boot, rng)
    b = Bootstrap.of(value_cand - value_ref, diffs, jackknife(_score, r, c))
    lo, hi = b.interval(0.95)
    metric = {"ref": value_ref, "cand": value_cand, "diff": value_cand - value_ref, "ci95": [lo, hi],
              "tolerance": tolerance, "paired_by": "task", "what": WHAT, "items": len(tasks),
              **decide({"task_score": b}, {"task_score": tolerance}, {"task_score": len(tasks)}, alpha)["task_score"]}
    def solved(recs: dict, k) -> bool:
        return bool(recs[k]["eval"]["success"])

    metric["pairs"] = {"conversations": len(keys),
                       "both_solved": sum(solved(ref, k) and solved(cand, k) for k in keys),
                       "ref_only": sum(solved(ref, k) and not solved(cand, k) for k in keys),
                       "cand_only": sum(solved(cand, k) and not solved(ref, k) for k in keys),
                       "identical_user_turns": sum(_user_turns(ref[k]) == _user_turns(cand[k]) for k in keys)}
    return metric


def _user_turns(record: dict) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "user"]


def summary(records: dict, seconds: float) -> dict:
    """One model's run: its score, how its conversations ended, and the time per conversation."""
    recs = list(records.values())
    return {"score": 100.0 * sum(bool(r["eval"]["success"]) for r in recs) / len(recs),
            "conversations": len(recs), "seconds": round(seconds, 2),
            "seconds_per_conversation": round(seconds / len(recs), 3),
            "user_turns_mean": float(np.mean([r["eval"]["user_turns"] for r in recs])),
            "ended_by": {e: sum(r["ended_by"] == e for r in recs) for e in sorted({r["ended_by"] for r in recs})}}


def run_extrinsic(ref: Path, cands: list[Path], labels: list[str], cfg: ExtrinsicConfig, *, n_boot: int,
                  alpha: float = ALPHA, progress: bool = True, log=None) -> dict:
    """Every model's task evaluation and each candidate's comparison with REF: the report's
    ``extrinsic`` section ({config, ref, candidates: [{label, run, metric}]})."""
    import time

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    sandbox = Sandbox(Limits(timeout=cfg.check_timeout))
    warnings = sandbox.probe()["warnings"] if any(t.grader.type == "python_tests" for t in cfg.tasks) else []
    for w in warnings:
        print(f"warning: code sandbox: {w}", file=sys.stderr)
    say(f"extrinsic: REF {ref} on {len(cfg.tasks)} tasks x {cfg.trials} trials against {cfg.assistant}")
    t0 = time.perf_counter()
    ref_records, assistant = run_tasks(ref, cfg, sandbox, progress=progress)
    try:
        return _candidates(ref_records, assistant, cands, labels, cfg, sandbox, warnings, time.perf_counter() - t0,
                           n_boot=n_boot, alpha=alpha, progress=progress, say=say)
    finally:
        close = getattr(assistant, "close", None)
        if close is not None:
            close()


def _candidates(ref_records, assistant, cands, labels, cfg, sandbox, warnings, ref_seconds, *, n_boot, alpha,
                progress, say) -> dict:
    import time

    out = {"config": {"tasks": cfg.tasks_name, "n_tasks": len(cfg.tasks), "trials": cfg.trials,
                      "max_turns": cfg.max_turns, "seed": cfg.seed, "assistant": _name(cfg.assistant),
                      "tolerance": TOLERANCE, "sampling": "paper (coupled)", "guardrails": "paper"},
           "sandbox_warnings": warnings, "ref": summary(ref_records, ref_seconds), "candidates": []}
    for path, label in zip(cands, labels):
        say(f"extrinsic: CAND {path}")
        t0 = time.perf_counter()
        recs, _ = run_tasks(path, cfg, sandbox, assistant=assistant, progress=progress)
        out["candidates"].append({"label": label, "run": summary(recs, time.perf_counter() - t0),
                                  "metric": compare_tasks(ref_records, recs, cfg.tasks, cfg.trials, n_boot=n_boot,
                                                          seed=cfg.seed, alpha=alpha)})
    return out


def merge(report: dict, ext: dict) -> dict:
    """The bench's report with the extrinsic section: each candidate's task-score verdict joins its
    other verdicts (and its headline), and the bench's verdict is recombined."""
    report["extrinsic"] = ext
    for c, e in zip(report["candidates"], ext["candidates"]):
        m = e["metric"]
        c["extrinsic"] = m
        if m["verdict"] == DEGRADED:
            c["degraded"] = [*c["degraded"], "task_score"]
        elif m["verdict"] == INCONCLUSIVE:
            c["inconclusive"] = [*c.get("inconclusive", []), "task_score"]
        c["verdict"] = combine([c["verdict"], m["verdict"]])
        c["headline"] = headline(c["label"], c["verdict"], c["gates"], {**c["metrics"], "task_score": m},
                                 report.get("advice", LOOK_FURTHER))
    report["verdict"] = combine([c["verdict"] for c in report["candidates"]])
    return report


TITLE = "Extrinsic preservation: the assistant's task score with each model as the user"


def rows(ext: dict) -> list[list[str]]:
    """The extrinsic table: each model's task score, and each candidate's difference and verdict."""
    ref = ext["ref"]
    out = [["user model", "task score", "CAND - REF [90% interval]", "verdict",
            "solved by both / REF only / CAND only", "identical user turns", "s / conversation"],
           ["REF", f"{ref['score']:.1f}%", "", "", "", "", f"{ref['seconds_per_conversation']:.2f}"]]
    for c in ext["candidates"]:
        m, p = c["metric"], c["metric"]["pairs"]
        lo, hi = m["verdict_interval"]
        n = m.get("n_needed")
        verdict = m["verdict"] + (f" (~{n} tasks needed)" if m["verdict"] == INCONCLUSIVE and n else "")
        out.append([c["label"], f"{m['cand']:.1f}%", f"{m['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]", verdict,
                    f"{p['both_solved']} / {p['ref_only']} / {p['cand_only']}",
                    f"{p['identical_user_turns']} of {p['conversations']}",
                    f"{c['run']['seconds_per_conversation']:.2f}"])
    return out


def notes(ext: dict) -> list[str]:
    cfg = ext["config"]
    return [(f"Extrinsic: {cfg['n_tasks']} tasks ({cfg['tasks']}) x {cfg['trials']} trial(s), up to {cfg['max_turns']} "
             f"user turns, against `{cfg['assistant']}` (one assistant for every model; a local one greedy), "
             f"seed {cfg['seed']}, coupled paper sampling, the paper's task guardrails; outcomes paired by task and "
             f"trial; preserved when the 90% interval of CAND - REF lies inside ±{cfg['tolerance']:g} points."),
            *[f"Extrinsic sandbox warning: {w}" for w in ext["sandbox_warnings"]]]


def _local(assistant: str) -> bool:
    return not assistant.startswith(("http://", "https://", "script:"))


def _name(model: str) -> str:
    return model if model.startswith(("http://", "https://", "script:")) else Path(model).name
