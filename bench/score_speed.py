"""Single-pass scoring vs the ways before it, side by side on the same conversations.

    python bench/score_speed.py                     # the bundled tiny UserLM (torch), 100 conversations
    python bench/score_speed.py --model default --limit 30
    python bench/score_speed.py --modes single_pass,per_sample,as_before

Modes (``--modes``, default all three), each timed on every conversation back to back, in an
order that rotates per conversation, so all see the same machine load:

* ``single_pass``: ``evaluation.score_conversation`` (one pass per chain of samples);
* ``per_sample``: the same code with one pass per sample (P(end) probes read from each pass);
* ``as_before``: what ``score`` did before evaluation.py existed (commit f4302a1): every sample
  teacher-forced by ``backend.score`` in a pass of its own, with and without intent, and every
  P(end) probe a further pass over its prompt.

The perplexities must agree within 1e-4 relative.  Writes bench/results/score_speed.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


MODES = ("single_pass", "per_sample", "as_before")


def as_before(backend, dialogue, max_len: int) -> tuple[dict, int]:
    """The scoring loop of ``score`` at f4302a1, for one conversation: per condition (sum of
    target log-probs, n), and the number of forward passes."""
    from userlm_local.data.flip import flip

    fmt = backend.fmt
    totals, passes = {}, 0
    for cond in ("with_intent", "without_intent"):
        samples = flip(fmt, dialogue, with_intent=cond == "with_intent", max_len=max_len)
        s_sum, n = 0.0, 0
        for smp in samples:
            start = next(i for i, t in enumerate(smp.labels) if t != -100)
            lp = backend.score(smp.input_ids, start)
            lps = [float(v) for v, t in zip(lp, smp.labels[start:]) if t != -100]
            s_sum, n, passes = s_sum + sum(lps), n + len(lps), passes + 1
            if cond == "with_intent" and smp.kind == "turn" and smp.turn > 0:  # the P(end) probe
                ids = smp.input_ids[:start] + [fmt.ids.newline, fmt.ids.end_conversation]
                backend.score(ids, len(ids) - 1)
                passes += 1
        totals[cond] = (s_sum, n)
    return totals, passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: the backend's)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from userlm_local.runtime.backends import load_backend
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.defaults import resolve_user_model
    from userlm_local.evaluation.scoring import score_conversation

    facts = machine_facts()
    path = resolve_user_model(args.model)
    backend = load_backend(path, **({"threads": args.threads} if args.threads else {}))
    dialogues = load_dialogues("heldout", limit=args.limit)
    max_len = min(args.max_len, backend.context_length)
    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= set(MODES) or "single_pass" not in modes:
        ap.error(f"--modes: single_pass and any of {', '.join(MODES[1:])}")
    secs = {m: 0.0 for m in modes}
    passes = {m: 0 for m in modes}
    totals = {m: {"with_intent": [0.0, 0], "without_intent": [0.0, 0]} for m in modes}
    for i, d in enumerate(dialogues):
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            t0 = time.perf_counter()
            if mode == "as_before":
                got, n_passes = as_before(backend, d, max_len)
            else:
                c = score_conversation(backend, d, max_len=max_len, one_pass=mode == "single_pass")
                got, n_passes = {cond: c.totals(cond) for cond in totals[mode]}, sum(c.passes.values())
            secs[mode] += time.perf_counter() - t0
            passes[mode] += n_passes
            for cond, (s_sum, n) in got.items():
                totals[mode][cond][0] += s_sum
                totals[mode][cond][1] += n
        print(f"{i + 1}/{len(dialogues)}: " + ", ".join(f"{m} {secs[m]:.1f} s" for m in modes),
              file=sys.stderr, flush=True)
    ppl = {m: {c: math.exp(-s / n) for c, (s, n) in t.items() if n} for m, t in totals.items()}
    rel = max(abs(ppl["single_pass"][c] / ppl[m][c] - 1) for m in modes for c in ppl["single_pass"])
    result = {
        "machine": facts, "args": vars(args), "model": str(path), "conversations": len(dialogues),
        "seconds": {k: round(v, 2) for k, v in secs.items()}, "passes": passes,
        "speedup": {m: secs[m] / secs["single_pass"] for m in modes if m != "single_pass"},
        "perplexity": ppl, "max_relative_ppl_difference": rel,
    }
    print(table(["mode", "seconds", "forward passes", "ppl with intent", "ppl without intent"],
                [[m, f"{secs[m]:.1f}", passes[m], f"{ppl[m]['with_intent']:.6g}",
                  f"{ppl[m]['without_intent']:.6g}"] for m in secs]))
    print("single pass is " + ", ".join(f"{v:.2f}x faster than {m}" for m, v in result["speedup"].items())
          + f"; largest relative perplexity difference {rel:.2e}")
    save_results("score_speed", result, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
