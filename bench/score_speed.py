"""Single-pass scoring vs one forward pass per sample, side by side on the same conversations.

    python bench/score_speed.py                     # the bundled tiny UserLM (torch), 100 conversations
    python bench/score_speed.py --model default --limit 30

For every conversation, both ways are timed back to back (alternating which goes first), so
both see the same machine load.  "Per sample" is what ``score`` did before: each user-turn
sample and the end sample a pass of its own (the old code also spent extra passes on the
P(end) probes; here they come free with each sample, so the ratio is a lower bound).  The
perplexities must agree within 1e-4 relative.  Writes bench/results/score_speed.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: the backend's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from userlm_local.backends import load_backend
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.defaults import resolve_user_model
    from userlm_local.evaluation import score_conversation

    facts = machine_facts()
    path = resolve_user_model(args.model)
    backend = load_backend(path, **({"threads": args.threads} if args.threads else {}))
    dialogues = load_dialogues("heldout", limit=args.limit)
    max_len = min(args.max_len, backend.context_length)
    secs = {"single_pass": 0.0, "per_sample": 0.0}
    passes = {"single_pass": 0, "per_sample": 0}
    totals = {k: {"with_intent": [0.0, 0], "without_intent": [0.0, 0]} for k in secs}
    for i, d in enumerate(dialogues):
        order = ("single_pass", "per_sample") if i % 2 == 0 else ("per_sample", "single_pass")
        for mode in order:
            t0 = time.perf_counter()
            c = score_conversation(backend, d, max_len=max_len, one_pass=mode == "single_pass")
            secs[mode] += time.perf_counter() - t0
            passes[mode] += sum(c.passes.values())
            for cond in ("with_intent", "without_intent"):
                s, n = c.totals(cond)
                totals[mode][cond][0] += s
                totals[mode][cond][1] += n
        print(f"{i + 1}/{len(dialogues)}: single {secs['single_pass']:.1f} s, per sample {secs['per_sample']:.1f} s",
              file=sys.stderr, flush=True)
    ppl = {m: {c: math.exp(-s / n) for c, (s, n) in t.items() if n} for m, t in totals.items()}
    rel = max(abs(ppl["single_pass"][c] / ppl["per_sample"][c] - 1) for c in ppl["single_pass"])
    result = {
        "machine": facts, "args": vars(args), "model": str(path), "conversations": len(dialogues),
        "seconds": {k: round(v, 2) for k, v in secs.items()}, "passes": passes,
        "speedup": secs["per_sample"] / secs["single_pass"], "perplexity": ppl, "max_relative_ppl_difference": rel,
    }
    print(table(["mode", "seconds", "forward passes", "ppl with intent", "ppl without intent"],
                [[m, f"{secs[m]:.1f}", passes[m], f"{ppl[m]['with_intent']:.6g}",
                  f"{ppl[m]['without_intent']:.6g}"] for m in secs]))
    print(f"speed-up {result['speedup']:.2f}x; largest relative perplexity difference {rel:.2e}")
    save_results("score_speed", result, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
