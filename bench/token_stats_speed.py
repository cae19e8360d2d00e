#!/usr/bin/env python
"""The bench's token statistics (``evaluation.token_stats``) with the nucleus read from a partial
selection of REF's most likely tokens vs a full sort of every row, side by side on real rows.

    python bench/token_stats_speed.py DIR/smollm2-userlm-F16.gguf DIR/smollm2-userlm-Q8_0.gguf
    python bench/token_stats_speed.py REF CAND --limit 64 --rounds 3

REF and CAND score the bench's first ``--limit`` held-out conversations as ``bench`` does
(``score_conversation`` with the log-softmax rows at user-turn targets); then, each round, both
ways compute the statistics of every conversation's rows, in an order that alternates by round.
``full sort`` is the same function with ``TOPS = ()`` (the way before: ``argsort`` of each row).
The results must agree within 1e-12.  Writes bench/results/token_stats_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


def rows_of(path: Path, limit: int):
    from userlm_local.data import load_dialogues
    from userlm_local.evaluation.bench_models import load_checked
    from userlm_local.evaluation.preservation import BenchConfig, pick_dialogues
    from userlm_local.evaluation.scoring import score_conversation

    backend = load_checked(path)
    try:
        dialogues = pick_dialogues(backend.fmt, BenchConfig(limit=limit), load_dialogues("heldout", limit=None))
        out = []
        for d in dialogues:
            c = score_conversation(backend, d, max_len=1024, keep_rows=True)
            out.append((c.rows, c.row_tokens))
        return out
    finally:
        backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref", type=Path)
    ap.add_argument("cand", type=Path)
    ap.add_argument("--limit", type=int, default=64, help="conversations (default 64, the bench_speed setting)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import numpy as np

    from userlm_local.evaluation import token_stats as ts

    ref, cand = rows_of(args.ref, args.limit), rows_of(args.cand, args.limit)
    positions = sum(len(r) for r, _ in ref)
    tops, ways = ts.TOPS, {"partial selection": None, "full sort": ()}
    seconds, results = {w: [] for w in ways}, {}
    try:
        for k in range(args.rounds):
            for way in (list(ways) if k % 2 == 0 else list(reversed(ways))):
                ts.TOPS = tops if ways[way] is None else ways[way]
                t0 = time.perf_counter()
                results[way] = [ts.token_stats(r, c, t) for (r, t), (c, _) in zip(ref, cand)]
                seconds[way].append(time.perf_counter() - t0)
    finally:
        ts.TOPS = tops
    pairs = [(a[key].astype(float), b[key].astype(float)) for a, b in zip(*results.values()) for key in a]
    if not all(np.array_equal(np.isnan(x), np.isnan(y)) for x, y in pairs):
        sys.exit("the two ways disagree on which positions are NaN")
    diff = max([float(np.nanmax(np.abs(x - y))) for x, y in pairs if len(x) and not np.isnan(x).all()] or [0.0])
    if diff > 1e-12:
        sys.exit(f"the two ways disagree by {diff:g}")
    reach = {}
    for t in (t for t in tops if t < ref[0][0].shape[1]):  # mass of REF's t most likely tokens, row by row
        top = [-np.partition(-np.exp(r.astype(np.float64)), t - 1, axis=1)[:, :t] for r, _ in ref]
        reach[f"top_{t}"] = float(np.mean(np.concatenate([x.sum(axis=1) for x in top]) >= ts.NUCLEUS_P))
    vocab = ref[0][0].shape[1]
    med = {w: statistics.median(s) for w, s in seconds.items()}
    print(table(["way", "median s", "rounds s", "ms per position"],
                [[w, f"{med[w]:.2f}", " ".join(f"{x:.2f}" for x in seconds[w]), f"{1000 * med[w] / positions:.2f}"]
                 for w in ways], title=f"{len(ref)} conversations, {positions} positions, vocabulary {vocab}"))
    print(f"full sort / partial selection: {med['full sort'] / med['partial selection']:.2f}x; rows whose nucleus "
          "lies in REF's top " + ", ".join(f"{t.split('_')[1]}: {v:.1%}" for t, v in reach.items())
          + f"; largest difference {diff:.1e}")
    save_results("token_stats_speed", {
        "machine": machine_facts(), "ref": args.ref.name, "candidate": args.cand.name,
        "conversations": len(ref), "positions": positions, "tops": list(tops), "rounds": args.rounds,
        "seconds": seconds, "median_s": med, "ratio_full_over_partial": med["full sort"] / med["partial selection"],
        "nucleus_within": reach, "max_abs_difference": diff})


if __name__ == "__main__":
    main()
