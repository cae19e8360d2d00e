"""All six of the paper's intrinsic metrics for one model, beside the published rows (spec §3.2, Table 2).

First-turn diversity and naturalness (proxy) come from first turns sampled for held-out intents
(the paper's sampling, up to 200 tokens); intent decomposition from the same first turns (the
paper measures every simulated turn: ours is a first-turn reading); dialogue termination is the
best F1 of teacher-forced P(end) on held-out conversations (``scoring``); role and intent
adherence from the probes (``robustness``).  Our three proxies are marked as such."""

from __future__ import annotations

from .metrics import first_turn_diversity, intent_decomposition
from .metrics.robustness import END, percent_with_interval
from .naturalness import VERSION as NATURALNESS_VERSION
from .naturalness import Detector, in_length
from .robustness import intent_adherence, role_adherence

# spec §3.2, Table 2 (percent; End F1 as reported)
PAPER = {
    "UserLM-8b": {"first_turn_diversity": 94.55, "intent_decomposition": 2.69, "termination_f1": 63.54,
                  "naturalness": 80.21, "role_adherence": 93.95, "intent_adherence": 94.65},
    "GPT-4o (prompted)": {"first_turn_diversity": 74.42, "intent_decomposition": 7.68, "termination_f1": 1.38,
                          "naturalness": 3.31, "role_adherence": 38.85, "intent_adherence": 70.95},
    "Human": {"first_turn_diversity": 94.01, "intent_decomposition": 1.68, "termination_f1": None,
              "naturalness": 90.15, "role_adherence": None, "intent_adherence": None},
}
ROWS = (("first_turn_diversity", "first-turn diversity ↑", ""),
        ("intent_decomposition", "intent decomposition ↓", "first turns only"),
        ("termination_f1", "dialogue termination F1 ↑", "best-threshold F1 of teacher-forced P(end)"),
        ("naturalness", "naturalness ↑", "proxy: our detector, not Pangram"),
        ("role_adherence", "user-role adherence ↑", ""),
        ("intent_adherence", "intent adherence ↑", "lexical judge unless --judge"))


def sample_first_turns(turns, dialogues, *, progress: bool = True) -> list[str]:
    """Each intent's first turn ('' where the user ends at once)."""
    texts = turns.many([(d.intent, [], ("first", d.id)) for d in dialogues], desc="first turns", unit="intent",
                       progress=progress)
    return ["" if t == END else t for t in texts]


def naturalness(texts: list[str], count_tokens, detector: Detector | None = None) -> dict:
    """Mean P(human) x 100 over the texts of 50 to 200 tokens, with a 95% interval."""
    kept = [t for t in texts if t and in_length(count_tokens(t))]
    if not kept:
        return {"value": None, "ci95": [None, None], "n": 0, "detector": NATURALNESS_VERSION}
    p = (detector or Detector()).p_human(kept)
    boot = percent_with_interval(list(p), seed=0)  # the mean of probabilities: the same bootstrap
    return {**boot, "detector": NATURALNESS_VERSION}


def six_metrics(turns, first_dialogues, *, termination_f1: float | None, role, intent, seed: int = 0,
                judge: str | None = None, judge_model: str | None = None, progress: bool = True,
                first_turns=None) -> dict:
    """The six metrics of a simulator (``turns``: ``robustness.SimulatorTurns`` for a UserLM, sampling
    first turns of up to 200 tokens, or ``PromptedTurns``): ``first_dialogues`` give the intents of the
    first turns, ``role`` / ``intent`` the probes; ``termination_f1`` from the scoring pass (0-1)."""
    firsts = sample_first_turns(first_turns or turns, first_dialogues, progress=progress)
    humans = [d.messages[0]["content"] for d in first_dialogues]
    out = {
        "first_turn_diversity": {"value": first_turn_diversity(firsts) if len(firsts) > 1 else None, "n": len(firsts),
                                 "human": first_turn_diversity(humans) if len(humans) > 1 else None},
        "intent_decomposition": {"value": intent_decomposition([(d.intent, [t]) for d, t in zip(first_dialogues, firsts)
                                                                if t]) if any(firsts) else None, "n": sum(map(bool, firsts))},
        "termination_f1": {"value": None if termination_f1 is None else 100.0 * termination_f1},
        "naturalness": naturalness(firsts, turns.count_tokens),
        "role_adherence": role_adherence(turns, role, seed=seed, progress=progress),
        "intent_adherence": intent_adherence(turns, intent, seed=seed, judge=judge, judge_model=judge_model,
                                             progress=progress),
    }
    return out


def render(model: str, six: dict) -> str:
    """The six metrics beside the paper's rows, as a Markdown table."""
    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    head = f"| metric | {model} (95% interval, n) | " + " | ".join(PAPER) + " | note |"
    lines = [head, "|" + "---|" * (3 + len(PAPER))]
    for key, name, note in ROWS:
        m = six[key]
        ci = m.get("ci95")
        ours = cell(m.get("value")) + (f" [{cell(ci[0])}, {cell(ci[1])}]" if ci and ci[0] is not None else "") + \
            (f", n={m['n']}" if m.get("n") is not None else "")
        lines.append(f"| {name} | {ours} | " + " | ".join(cell(PAPER[r][key]) for r in PAPER) + f" | {note} |")
    return "\n".join(lines)
