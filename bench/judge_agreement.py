"""How far to trust intent adherence's lexical judge: its verdicts against labels a person gave by hand,
and (with ``--judge URL``) an LLM judge's on the same replies (issue 25).

Two steps, so the labels are a person's and not the code's:

    python bench/judge_agreement.py sample --n 40            # the default UserLM answers 40 intent probes
    # label each reply in bench/results/judge_agreement/replies.jsonl: add "hand": "returned" | "followed"
    # | "neither" (read the question, the assistant's diversion and the reply; nothing else)
    python bench/judge_agreement.py agree [--judge URL --judge-model NAME]

``agree`` prints the confusion of the lexical rule against the hand labels ("neither" counts as not
returned, as the metric does) and writes ``agreement.json`` beside the replies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "judge_agreement"


def sample(args) -> None:
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.defaults import resolve_user_model
    from userlm_local.evaluation.metrics.robustness import END, returns_to_question
    from userlm_local.evaluation.probes import intent_probes
    from userlm_local.evaluation.robustness import SimulatorTurns, intent_replies
    from userlm_local.runtime.backends import load_backend, load_options

    model = resolve_user_model(args.model)
    probes = intent_probes(args.n, dialogues=load_dialogues("heldout"))
    backend = load_backend(model, **load_options(model, n_ctx=2048))
    try:
        replies = intent_replies(SimulatorTurns(backend, seed=args.seed), probes)
    finally:
        backend.close()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "replies.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for k, (p, r) in enumerate(zip(probes, replies)):
            fh.write(json.dumps({"k": k, "question": p.question, "assistant": p.suggestion, "reply": r,
                                 "ended": r == END,
                                 "lexical": r != END and returns_to_question(r, p.question, p.suggestion)},
                                ensure_ascii=False) + "\n")
    print(f"wrote {path}: label each line with \"hand\"", file=sys.stderr)


def agree(args) -> None:
    from userlm_local.evaluation.probes import IntentProbe
    from userlm_local.evaluation.robustness import llm_judge
    from userlm_local.util.errors import UserError

    rows = [json.loads(line) for line in (OUT / "replies.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows = [r for r in rows if not r["ended"]]
    missing = [r["k"] for r in rows if r.get("hand") not in ("returned", "followed", "neither")]
    if missing:
        sys.exit(f"replies without a hand label: {missing}")
    hand = [r["hand"] == "returned" for r in rows]
    judges = {"lexical": [r["lexical"] for r in rows]}
    unusable = 0
    if args.judge:
        verdicts = []
        for r in rows:
            try:
                verdicts.append(llm_judge(args.judge, IntentProbe(r["question"], r["assistant"]), r["reply"],
                                          model=args.judge_model))
            except UserError:  # answered neither label: counted as not returned, and counted
                verdicts.append(False)
                unusable += 1
        judges[f"llm ({args.judge_model or 'default'})"] = verdicts
    out, table_rows = {}, []
    for name, v in judges.items():
        tp = sum(a and b for a, b in zip(v, hand))
        tn = sum((not a) and (not b) for a, b in zip(v, hand))
        fp = sum(a and not b for a, b in zip(v, hand))
        fn = sum(b and not a for a, b in zip(v, hand))
        out[name] = {"agreement": (tp + tn) / len(rows), "returned_both": tp, "not_both": tn,
                     "judge_only": fp, "hand_only": fn}
        table_rows.append([name, f"{100 * (tp + tn) / len(rows):.1f}%", tp, tn, fp, fn])
    print(table(["judge", "agreement with hand labels", "both: returned", "both: not", "judge only", "hand only"],
                table_rows, title=f"{len(rows)} replies that went on, labelled by hand; "
                f"hand: {sum(hand)} returned, {sum(r['hand'] == 'followed' for r in rows)} followed, "
                f"{sum(r['hand'] == 'neither' for r in rows)} neither"))
    if args.judge:
        print(f"the LLM judge answered neither REFUSED nor ACCEPTED {unusable} times (counted as not returned)")
    save_results("agreement", {"machine": machine_facts(), "replies": len(rows), "hand_returned": sum(hand),
                               "judges": out, "llm_unusable_answers": unusable if args.judge else None},
                 OUT / "agreement.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="step", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--n", type=int, default=40)
    s.add_argument("--model", default=None)
    s.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("agree")
    a.add_argument("--judge", default=None)
    a.add_argument("--judge-model", default=None)
    args = ap.parse_args()
    (sample if args.step == "sample" else agree)(args)


if __name__ == "__main__":
    main()
