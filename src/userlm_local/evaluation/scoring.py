"""Evaluation of a UserLM on real conversations and on its own samples (paper §3).

* ``score_dialogues``: distributional alignment on held-out real conversations.  Every
  conversation is flipped (``data.flip``) into its user-turn samples and its end sample; the
  model is teacher-forced on each target and the perplexity is the micro average over all
  target tokens, once with the intent as the system message and once without.  Termination:
  P(``<|endconversation|>``) at the first content position (prompt + the teacher-forced
  newline), at true ends vs at every other turn boundary after an assistant turn.
* ``first_turn_report``: first-turn diversity of sampled vs human first turns on the same intents.
* ``campaign_behaviour``: what simulated conversations look like (turns, who ended them, words
  per turn, first turns that answer instead of ask, intent decomposition).

Used by ``userlm-local score`` and by the benchmarks; commands only parse arguments and print.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass

import numpy as np

from ..data.flip import flip
from ..data.text import words
from ..util.errors import UserError
from .metrics import best_f1, f1_at, first_turn_diversity, intent_decomposition, perplexity, roc_auc
from .robustness import END, SimulatorTurns

CONVENTION = (
    "target tokens of each user turn: the leading '\\n', the turn's text tokens and <|eot_id|>; "
    "end samples: '\\n', <|endconversation|>, <|eot_id|>; prompts rendered with the UserLM "
    "template (no BOS); micro-average over all target tokens; a prompt longer than max_len "
    "loses its oldest exchanges (intent kept)"
)
LONG = ("window", "truncate")  # how a conversation longer than max_len is scored (see ``convention``)
WINDOW = ("a conversation longer than max_len is scored in windows of max_len tokens, one pass each (like "
          "strided perplexity): the intent (with intent) or nothing (without) and then a stretch of the "
          "conversation, starting at the latest user turn, else token, that leaves every target it scores at least "
          "{context} conversation tokens before it, or all of them; each target is scored in one window")


def convention(long: str = "truncate", context: int | None = None) -> str:
    """The scoring convention in words: targets, and what happens past max_len (``long``)."""
    if long == "truncate":
        return CONVENTION
    return CONVENTION[:CONVENTION.index("; a prompt longer")] + "; " + WINDOW.format(context=context)


def default_window_context(max_len: int) -> int:
    """Conversation tokens each target sees before it in a window, unless told: 2,048 (the paper's
    training length), at most half the window."""
    return min(2048, max_len // 2)


TERMINATION = (
    "P(<|endconversation|>) at the first content position (prompt + teacher-forced '\\n'), with "
    "intent; positives = true conversation ends, negatives = other user-turn boundaries after an "
    "assistant turn"
)


def chains(samples) -> list[list]:
    """Consecutive samples whose ids extend the previous one's: one forward pass scores them all."""
    out: list[list] = []
    for s in samples:
        last = out[-1][-1] if out else None
        if last is not None and len(s.input_ids) >= len(last.input_ids) \
                and s.input_ids[:len(last.input_ids)] == last.input_ids:
            out[-1].append(s)
        else:
            out.append([s])
    return out


CONDITIONS = ("with_intent", "without_intent")


@dataclass
class SampleScore:
    kind: str  # "turn" | "end"
    turn: int
    lps: list[float]  # log-probs of the target tokens
    probe: float | None  # P(<|endconversation|> | prompt + '\n'); None for the end sample


@dataclass
class ConversationScore:
    """One conversation scored under both conditions; ``rows`` (with intent, when asked for):
    the log-softmax rows at every user-turn target position, in order ([positions, vocab])."""

    id: str
    samples: dict[str, list[SampleScore]]
    passes: dict[str, int]
    rows: np.ndarray | None = None
    row_tokens: np.ndarray | None = None  # the token actually there at each row's position
    tokens: int = 0  # ids fed to the model, all passes of both conditions
    windowed: int = 0  # chains longer than the window (scored in several passes)
    cut: int = 0  # windows that start inside a message (no user turn gave the context)

    def termination(self) -> tuple[list[float], list[bool]]:
        """(P(end), is_end) at each probe: true ends, and boundaries after an assistant turn."""
        scores, labels = [], []
        for s in self.samples["with_intent"]:
            if s.kind == "end":  # target: '\n', <|endconversation|>, eot
                scores.append(math.exp(s.lps[1]))
                labels.append(True)
            elif s.turn > 0:
                scores.append(s.probe)
                labels.append(False)
        return scores, labels

    def totals(self, condition: str) -> tuple[float, int]:
        """(sum of target log-probs, number of target tokens)."""
        lps = [x for s in self.samples[condition] for x in s.lps]
        return float(sum(lps)), len(lps)


def plan_windows(need: list[int], head: int, starts: list[int], window: int, context: int) -> list[tuple[int, list[int]]]:
    """The passes that score positions ``need`` (sorted; position i is read from the logits after
    ids[:i]) of a conversation longer than ``window``: ``(s, covered)`` for each, the pass being
    ``ids[:head] + ids[s:covered[-1]]`` (at most ``window`` ids).  The first starts at ``head``;
    each later one at the latest of ``starts`` (user-turn starts), or else token, that leaves its
    first position ``context`` ids of the conversation before it, and covers what fits."""
    from bisect import bisect_right

    room = window - head
    if room <= context:
        raise UserError(f"a window of {window} tokens has no room for a target after {head} tokens of intent "
                        f"and {context} of context: raise --max-len or lower --window-context")
    out, k, s = [], 0, head
    while k < len(need):
        if out:
            i = need[k]
            j = bisect_right(starts, i - context) - 1
            s = starts[j] if j >= 0 and starts[j] >= i - room else i - context
        j = bisect_right(need, s + room, k)
        out.append((s, need[k:j]))
        k = j
    return out


def read_positions(backend, ids: list[int], need: list[int], end_id: int, *, keep_rows: bool = False,
                   head: int = 0, starts: list[int] = (), window: int | None = None, context: int = 0):
    """log P(ids[i] | before) and log P(end_id | before) at each position i of ``need`` (sorted),
    from one pass over ``ids[:need[-1]]``, or from windows (``plan_windows``) where that is longer
    than ``window``; and with ``keep_rows`` the log-softmax rows.  Returns (lp, lp_end, rows,
    passes, ids fed, windows cut inside a message)."""
    if window is None or need[-1] <= window:
        plan = [(head, need)]
    else:
        plan = plan_windows(need, head, starts, window, context)
    lp, lp_end, rows, fed, cut = [], [], [], 0, 0
    for s, covered in plan:
        x = backend.logits(ids[:head] + ids[s:covered[-1]], positions=[head + i - 1 - s for i in covered])
        x -= x.max(axis=-1, keepdims=True)  # log-softmax in place: no copy of the rows
        x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
        lp.append(x[np.arange(len(covered)), [ids[i] for i in covered]])
        lp_end.append(x[:, end_id])
        if keep_rows:
            rows.append(x)
        fed += head + covered[-1] - s
        cut += s not in starts and s != head
    return (np.concatenate(lp), np.concatenate(lp_end), np.concatenate(rows) if keep_rows else None,
            len(plan), fed, cut)


def score_chain(backend, chain, end_id: int, *, keep_rows: bool = False, **window):
    """Every sample of a chain scored from one forward pass over the longest sample (or from
    windows over it: ``window``, ``context``, ``head``, ``starts`` of ``read_positions``): a list of
    ``SampleScore``, with ``keep_rows`` the log-softmax rows at the target positions of all samples
    (the distributions the model samples user turns from) and the tokens there, or None; and
    (passes, ids fed, windows cut).  Logits are computed only where they are read: at the
    targets and at the P(end) probes."""
    ids = chain[-1].input_ids
    firsts = [next(i for i, t in enumerate(s.labels) if t != -100) for s in chain]
    targets = sorted({i for s in chain for i, t in enumerate(s.labels) if t != -100})
    need = sorted(set(targets) | {first + 1 for first in firsts})
    lp, lp_end, rows, *cost = read_positions(backend, ids, need, end_id, keep_rows=keep_rows, **window)
    at = {i: k for k, i in enumerate(need)}
    out = []
    for s, first in zip(chain, firsts):
        lps = [float(lp[at[i]]) for i, t in enumerate(s.labels) if t != -100]
        probe = math.exp(float(lp_end[at[first + 1]])) if s.kind == "turn" else None
        out.append(SampleScore(s.kind, s.turn, lps, probe))
    if not keep_rows:
        return out, None, cost
    return out, (rows[[at[i] for i in targets]], np.array([ids[i] for i in targets], dtype=np.int64)), cost


def head_length(fmt, dialogue, with_intent: bool) -> int:
    """Ids at the head of every window: the format's start and, with intent, the intent's message."""
    return len(fmt.start()) + (len(fmt.message("system", dialogue.intent)) if with_intent and dialogue.intent else 0)


def score_conversation(backend, dialogue, *, max_len: int, keep_rows: bool = False, one_pass: bool = True,
                       long: str = "truncate", context: int | None = None) -> ConversationScore:
    """Both conditions of one conversation.  ``long="truncate"``: samples longer than ``max_len``
    lose their oldest exchanges (``flip``), one pass per chain of samples that extend each other;
    ``"window"``: one pass over the whole conversation, or windows of ``max_len`` with at least
    ``context`` tokens before each target (``plan_windows``).  ``one_pass=False``: one pass per
    sample (the old way, to measure against)."""
    fmt = backend.fmt
    context = default_window_context(max_len) if context is None else context
    samples, passes, rows, tokens = {}, {}, [], []
    fed = windowed = cut = 0
    for cond in CONDITIONS:
        with_intent = cond == "with_intent"
        flipped = flip(fmt, dialogue, with_intent=with_intent, max_len=max_len if long == "truncate" else None)
        groups = chains(flipped) if one_pass else [[s] for s in flipped]
        window = {}
        if long == "window":
            opens = len(fmt.open_user())
            window = {"window": max_len, "context": context, "head": head_length(fmt, dialogue, with_intent),
                      "starts": [next(i for i, t in enumerate(s.labels) if t != -100) - opens for s in flipped]}
        samples[cond], passes[cond] = [], 0
        for chain in groups:
            scored, r, (n, f, c) = score_chain(backend, chain, fmt.ids.end_conversation,
                                               keep_rows=keep_rows and with_intent, **window)
            samples[cond] += scored
            passes[cond] += n
            fed, windowed, cut = fed + f, windowed + (n > 1), cut + c
            if r is not None:
                rows.append(r[0])
                tokens.append(r[1])
    return ConversationScore(dialogue.id, samples, passes, np.concatenate(rows) if rows else None,
                             np.concatenate(tokens) if tokens else None, fed, windowed, cut)


def check_userlm(backend) -> None:
    if backend.fmt.ids.end_conversation is None:
        raise UserError(f"{backend.path}: the model has no <|endconversation|> token; it is not a UserLM")


def check_window(fmt, dialogues, max_len: int, context: int) -> None:
    """One line, before anything is scored, where a window has no room for a target after the intent."""
    for d in dialogues:
        if not 0 <= context < max_len - head_length(fmt, d, True):
            raise UserError(f"--max-len {max_len} leaves no room for a target after the intent of conversation "
                            f"{d.id} ({head_length(fmt, d, True)} tokens) and {context} tokens of window context: "
                            "raise --max-len or lower --window-context")


def score_all(backend, dialogues, *, max_len: int, progress: bool = True, desc: str = "scoring",
              one_pass: bool = True, long: str = "truncate", context: int | None = None):
    """``ConversationScore`` for each conversation with a sample within ``max_len`` (every one with
    ``long="window"``); the progress bar shows the ids fed to the model per second."""
    import time

    from tqdm import tqdm

    check_userlm(backend)
    max_len = min(max_len, backend.context_length)
    if long == "window":
        context = default_window_context(max_len) if context is None else context
        check_window(backend.fmt, dialogues, max_len, context)
    out, fed, t0 = [], 0, time.perf_counter()
    bar = tqdm(dialogues, desc=desc, unit="conv", file=sys.stderr, disable=not progress)
    for d in bar:
        c = score_conversation(backend, d, max_len=max_len, one_pass=one_pass, long=long, context=context)
        fed += c.tokens
        bar.set_postfix_str(f"{fed / max(time.perf_counter() - t0, 1e-9):.0f} tok/s", refresh=False)
        if c.samples["with_intent"]:
            out.append(c)
    if not out:
        raise UserError("no sample fits in max_len; raise --max-len")
    return out


def alignment_report(scores: list[ConversationScore]) -> dict:
    """Perplexity (micro average) per condition and the termination statistics."""

    result = {}
    for cond in CONDITIONS:
        lps = {"turn": [], "end": []}
        for c in scores:
            for s in c.samples[cond]:
                lps[s.kind].append(s.lps)
        all_lps = lps["turn"] + lps["end"]
        result[cond] = {
            "ppl": perplexity(all_lps),
            "ppl_turns": perplexity(lps["turn"]) if lps["turn"] else None,
            "ppl_end": perplexity(lps["end"]) if lps["end"] else None,
            "n_tokens": sum(len(x) for x in all_lps),
            "n_samples": len(all_lps),
            "n_passes": sum(c.passes[cond] for c in scores),
        }
    p_end, is_end = [], []
    for c in scores:
        p, e = c.termination()
        p_end += p
        is_end += e
    f1, threshold = best_f1(p_end, is_end)
    ends = [p for p, e in zip(p_end, is_end) if e]
    others = [p for p, e in zip(p_end, is_end) if not e]
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {
        "ppl_with_intent": result["with_intent"]["ppl"],
        "ppl_without_intent": result["without_intent"]["ppl"],
        "n_tokens": result["with_intent"]["n_tokens"],
        "n_conversations": len(scores),
        "n_samples": result["with_intent"]["n_samples"],
        "with_intent": result["with_intent"],
        "without_intent": result["without_intent"],
        "convention": CONVENTION,
        "termination": TERMINATION,
        "p_end_mean_at_end": mean(ends),
        "p_end_mean_elsewhere": mean(others),
        "n_end": len(ends),
        "n_elsewhere": len(others),
        "termination_auc": roc_auc(p_end, is_end) if ends and others else None,
        "termination_f1": f1,
        "termination_f1_threshold": threshold if ends else None,
        "termination_f1_at_0.5": f1_at(p_end, is_end, 0.5) if ends else None,
    }


def score_dialogues(backend, dialogues, *, max_len: int, progress: bool = True, one_pass: bool = True,
                    long: str = "truncate", context: int | None = None) -> dict:
    """The alignment report for ``dialogues`` (see the module docstring): one forward pass per
    chain of prefix samples and condition (a whole conversation, unless it is longer than
    ``max_len``: then its later samples lose their oldest exchanges, or with ``long="window"`` it
    is scored in windows, reported under ``window``)."""
    max_len = min(max_len, backend.context_length)
    if long == "window" and context is None:
        context = default_window_context(max_len)
    scores = score_all(backend, dialogues, max_len=max_len, progress=progress, one_pass=one_pass, long=long,
                       context=context)
    report = alignment_report(scores)
    report["n_conversations"] = len(dialogues)
    report["convention"] = convention(long, context)
    report["long"] = long
    if long == "window":
        report["window"] = {"length": max_len, "min_context": context,
                            "conversations_windowed": sum(c.windowed > 0 for c in scores),
                            "passes": sum(sum(c.passes.values()) for c in scores if c.windowed),
                            "windows_cut_inside_a_message": sum(c.cut for c in scores)}
    return {"model": backend.path, **report, "max_len": max_len}


def first_turn_report(backend, dialogues, *, seed: int, progress: bool = True, concurrency: int = 1) -> dict:
    """First-turn diversity (100 x (1 - mean pairwise unigram Jaccard)) of sampled vs human first turns
    (``concurrency``: turns sampled at once, at most the backend's sequences)."""
    turns = SimulatorTurns(backend, seed=seed, max_new_tokens=64, concurrency=concurrency)
    texts = turns.many([(d.intent, [], (d.id,)) for d in dialogues], desc="first turns", unit="intent",
                       progress=progress)
    generated = ["" if t == END else t for t in texts]
    human = [d.messages[0]["content"] for d in dialogues]
    return {"n_first_turns": len(generated), "first_turn_diversity": first_turn_diversity(generated),
            "human_first_turn_diversity": first_turn_diversity(human),
            "first_turn_ended": sum(1 for t in generated if not t),
            "first_turn_examples": generated[:5]}


# A first user turn "answers instead of asks" when it opens the way an assistant's reply does.
ANSWER_OPENERS = re.compile(
    r"^\W*(sure|certainly|of course|absolutely|great question|here is|here's|here are|i'd be happy|"
    r"i would be happy|i'm happy to|as an ai|hello! how can i|hi! how can i|how can i (help|assist)|"
    r"thank you for (your|the) (question|request)|yes, i can|i can help)\b", re.IGNORECASE)
ANSWER_DETECTOR = ("a first user turn 'answers instead of asks' when it opens like an assistant reply: "
                   "Sure / Certainly / Of course / Absolutely / Great question / Here is|are / I'd be happy / "
                   "As an AI / How can I help|assist / Yes, I can / I can help (case-insensitive, at the start)")


def answers_instead_of_asking(turn: str) -> bool:
    return bool(ANSWER_OPENERS.match(turn.strip()))


def campaign_behaviour(records: list[dict]) -> dict:
    """Behaviour of simulated users from transcript records (the campaign's JSONL objects)."""

    convs = [r for r in records if r.get("ended_by") != "error"]
    if not convs:
        raise UserError("no finished conversations to describe")
    turns = [[m["content"] for m in r["messages"] if m["role"] == "user"] for r in convs]
    all_turns = [t for ts in turns for t in ts]
    firsts = [ts[0] for ts in turns if ts]
    return {
        "conversations": len(convs),
        "mean_user_turns": sum(len(ts) for ts in turns) / len(convs),
        "share_ended_by_user": sum(r["ended_by"] == "user" for r in convs) / len(convs),
        "ended_by": {k: sum(r["ended_by"] == k for r in convs) for k in sorted({r["ended_by"] for r in convs})},
        "mean_words_per_turn": sum(len(words(t)) for t in all_turns) / max(1, len(all_turns)),
        "share_first_turns_answering": sum(map(answers_instead_of_asking, firsts)) / max(1, len(firsts)),
        "intent_decomposition": intent_decomposition(
            [(r["intent"], ts) for r, ts in zip(convs, turns) if ts]) if all_turns else None,
        "answer_detector": ANSWER_DETECTOR,
    }
