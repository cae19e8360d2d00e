#!/usr/bin/env python
"""``score --data heldout --limit 100`` on the default UserLM, the way it ran before issue 28 and
now, side by side in one run (issue 28's target: at most 10 minutes on 2 cores).

    python bench/score_default.py                       # 100 conversations, all three modes
    python bench/score_default.py --limit 20 --modes before,now

Modes, each in a worker process of its own (libgomp reads its wait policy when it loads):

* ``before``: as ``score`` ran before issue 28: the backend loaded with its defaults then
  (context 4096, libgomp's default barrier wait, which spins first), ``--max-len 2048`` and
  every sample longer than that losing its oldest exchanges (``long="truncate"``), one pass per
  chain of samples that extend each other;
* ``before-spin``: the same scoring with the backend's barrier wait now (GOMP_SPINCOUNT=10000),
  to tell the two changes apart;
* ``now``: ``score``'s defaults now: context and ``--max-len`` = the model's (8192), one pass
  per conversation, windows of 8192 with at least 2048 tokens before each target past that,
  threads spinning briefly at their barriers (GOMP_SPINCOUNT=10000).

Conversations go to the modes one at a time, in an order that rotates per conversation, so all
see the same machine load.  Reports wall and CPU seconds, the ids fed to the model per second,
and each mode's perplexities and termination AUC / F1 (how the numbers move with the convention).
Writes bench/results/score_default.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402

MODES = ("before", "before-spin", "now")


def worker(mode: str, limit: int, model: str | None) -> None:
    import userlm_local.runtime.backends.llama_cpp as lc

    if mode == "before":
        lc.SPIN_COUNT = None  # libgomp's own default, as before issue 28
    from userlm_local.data.sharegpt import load_dialogues
    from userlm_local.defaults import resolve_user_model
    from userlm_local.evaluation.scoring import check_window, default_window_context, score_conversation
    from userlm_local.runtime.backends import inspect_model, load_backend, load_options

    path = resolve_user_model(model)
    dialogues = load_dialogues("heldout", limit=limit)
    if mode == "now":
        max_len = inspect_model(path).context_length
        backend = load_backend(path, **load_options(path, n_ctx=max_len))
        opts = {"max_len": max_len, "long": "window", "context": default_window_context(max_len)}
        check_window(backend.fmt, dialogues, max_len, opts["context"])
    else:
        backend = load_backend(path)  # the defaults score used: context 4096
        opts = {"max_len": 2048, "long": "truncate"}
    print(json.dumps({"n": len(dialogues), "opts": opts, "n_ctx": backend.context_length}), flush=True)
    for line in sys.stdin:
        d = dialogues[int(line)]
        t0, c0 = time.perf_counter(), time.process_time()
        c = score_conversation(backend, d, **opts)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": secs, "cpu": cpu, "score": base64.b64encode(pickle.dumps(c)).decode()}),
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--model", default=None, help="a UserLM GGUF (default: the default UserLM)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.limit, args.model)

    from userlm_local.evaluation.scoring import alignment_report

    facts = machine_facts()
    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= set(MODES):
        ap.error(f"--modes: from {', '.join(MODES)}")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    workers, setup = {}, {}
    for m in modes:
        cmd = [sys.executable, __file__, "--worker", m, "--limit", str(args.limit)]
        cmd += ["--model", args.model] if args.model else []
        workers[m] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        setup[m] = json.loads(workers[m].stdout.readline())
    n = setup[modes[0]]["n"]
    secs = {m: 0.0 for m in modes}
    cpu = {m: 0.0 for m in modes}
    scores = {m: [] for m in modes}
    t_start = time.perf_counter()
    for i in range(n):
        for m in modes[i % len(modes):] + modes[:i % len(modes)]:
            w = workers[m]
            w.stdin.write(f"{i}\n")
            w.stdin.flush()
            got = json.loads(w.stdout.readline())
            secs[m] += got["seconds"]
            cpu[m] += got["cpu"]
            scores[m].append(pickle.loads(base64.b64decode(got["score"])))
        print(f"{i + 1}/{n} (load average {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{m} {secs[m]:.0f} s" for m in modes), file=sys.stderr, flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    wall = time.perf_counter() - t_start

    result = {"machine": facts, "args": vars(args), "conversations": n, "wall_seconds_all_modes": round(wall, 1),
              "load_average_at_end": os.getloadavg(), "modes": {}}
    rows = []
    for m in modes:
        kept = [c for c in scores[m] if c.samples["with_intent"]]
        rep = alignment_report(kept)
        fed = sum(c.tokens for c in scores[m])
        r = {"setup": setup[m], "seconds": round(secs[m], 1), "cpu_seconds": round(cpu[m], 1), "ids_fed": fed,
             "ids_per_second": fed / secs[m], "passes": sum(sum(c.passes.values()) for c in scores[m]),
             "windowed_conversations": sum(c.windowed > 0 for c in scores[m]),
             "windows_cut_inside_a_message": sum(c.cut for c in scores[m]),
             "conversations_scored": len(kept), "speedup_vs_before": secs.get("before", secs[m]) / secs[m],
             **{k: rep[k] for k in ("ppl_with_intent", "ppl_without_intent", "n_tokens", "n_samples",
                                    "termination_auc", "termination_f1", "p_end_mean_at_end",
                                    "p_end_mean_elsewhere")}}
        result["modes"][m] = r
        rows.append([m, f"{secs[m] / 60:.1f}", f"{cpu[m] / 60:.1f}", fed, f"{r['ids_per_second']:.0f}", r["passes"],
                     f"{r['speedup_vs_before']:.2f}", f"{r['ppl_with_intent']:.4f}", f"{r['ppl_without_intent']:.4f}",
                     r["n_tokens"], f"{r['termination_auc']:.4f}", f"{r['termination_f1']:.4f}"])
    print(table(["mode", "minutes", "CPU min", "ids fed", "ids/s", "passes", "x before", "ppl intent",
                 "ppl no intent", "target tokens", "term. AUC", "term. F1"], rows,
                title=f"score --data heldout --limit {n}, default UserLM; {facts['cpu_model']}, {facts['cores']} cores; "
                      f"other busy processes at start: {len(facts['busy_processes_at_start'])}"))
    save_results("score_default", result, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
