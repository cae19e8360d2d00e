#!/usr/bin/env python
"""Simulated user turns one at a time vs eight at once on the engine (``runtime.scheduler``), for a
decode-bound and a prefill-bound workload, side by side in one run: why ``bench --concurrency 8``'s
campaign was no faster than the old one-at-a-time code (bench_speed).

* ``first turns``: each user's first turn from its intent alone (short prompt, up to 64 tokens decoded);
* ``after two turns``: the same users after the conversation's first two real turns, teacher-forced
  (clipped to 3,000 characters each): mostly prefill, as the bench's campaign with replayed assistant turns.

Each workload runs on the default UserLM (Q8_0) loaded with ``n_ctx`` 4096 per sequence, as the bench
loads it, at 1 sequence and at 8, with each KV layout llama.cpp offers (``llama_cpp.KV_SPLIT``):
unified (one pool of cells every sequence attends over, masked) and split (a stream per sequence).

    python bench/batch_turns.py [--users 16]       # writes bench/results/batch_turns.json
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table

from userlm_local.data.sharegpt import load_dialogues
from userlm_local.defaults import resolve_user_model
from userlm_local.runtime.backends import load_backend
from userlm_local.runtime.scheduler import Scheduler
from userlm_local.simulation.user import UserSimulator


def start(sim, i, d, history: bool):
    u = sim.start(d.intent, seed=0, key=(i,))
    for m in d.messages[:2] if history else []:
        (u.conversation.add_user if m["role"] == "user" else u.add_assistant)(m["content"][:3000])
    return u


def run(model, dialogues, history: bool, seqs: int, kv: str = "unified") -> dict:
    from userlm_local.runtime.backends import llama_cpp
    llama_cpp.KV_SPLIT = kv == "split"
    b = load_backend(model, n_ctx=4096, n_seq_max=seqs)
    sim = UserSimulator(b, max_new_tokens=64)
    sch = Scheduler(b) if seqs > 1 else None

    def one(i):
        u = start(sim, i, dialogues[i], history)
        t = sch.next_turn(u) if sch else u.next_turn()
        (sch.call if sch else lambda f: f())(u.session.close)
        return t.usage["prefill_tokens"], t.usage["decode_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(seqs) as ex:
        done = list(ex.map(one, range(len(dialogues))))
    secs = time.perf_counter() - t0
    if sch:
        sch.close()
    b.close()
    return {"seconds": round(secs, 2), "prefill_tokens": sum(p for p, _ in done),
            "decode_tokens": sum(d for _, d in done), "max_batch": sch.max_batch if sch else 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    machine = machine_facts()
    model = resolve_user_model(None)
    ds = [d for d in load_dialogues("heldout", limit=200) if d.intent.strip() and len(d.messages) >= 3][:args.users]
    rows, out = [], []
    for name, history in (("first turns", False), ("after two turns", True)):
        for seqs, kv in ((1, "unified"), (8, "unified"), (1, "split"), (8, "split")):
            r = {"workload": name, "sequences": seqs, "kv": kv, **run(model, ds, history, seqs, kv)}
            out.append(r)
            base = out[-1 if seqs == 1 else -2]["seconds"]
            rows.append([name, seqs, kv, r["prefill_tokens"], r["decode_tokens"], f"{r['seconds']:.1f}",
                         f"{base / r['seconds']:.2f}x", r["max_batch"]])
    print(table(["workload", "sequences", "kv", "prefilled", "decoded", "seconds", "vs 1 at a time", "max batch"], rows,
                title=f"{len(ds)} simulated users, default UserLM, n_ctx 4096 per sequence"))
    print(f"wrote {save_results('batch_turns', {'machine': machine, 'users': len(ds), 'runs': out}, args.json)}")


if __name__ == "__main__":
    main()
