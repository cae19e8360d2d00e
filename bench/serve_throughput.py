#!/usr/bin/env python
"""``userlm-local serve`` under load: 1 streamed request at a time vs 8 at once, side by side.

Starts the server as a user would (``userlm-local serve MODEL --parallel 8``, default model: the
default assistant SmolLM2-135M-Instruct), then with the official ``openai`` client sends the same
set of streamed chat requests (``--requests`` prompts, each ``--max-tokens``, temperature 1 with
a per-request seed, usage reported by the server) first one after another, then ``--concurrency``
at a time, and again one after another (so the machine's state is bracketed).  Reported: aggregate
completion tokens/s, mean time to first token, and the ratio of concurrent to sequential.

    python bench/serve_throughput.py
    python bench/serve_throughput.py --model tiny --requests 16
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, other_busy_processes, save_results, table  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "How do I bake bread at home?", "Explain recursion to a child.",
           "Give me three tips for a job interview.", "What is the capital of Australia, and why not Sydney?",
           "Summarise the plot of Hamlet.", "How does a bicycle stay upright?", "Suggest a name for a grey cat."]


def start(model: str, parallel: int, threads: int | None):
    argv = [sys.executable, "-m", "userlm_local.cli", "serve", *([model] if model else []), "--port", "0",
            "--parallel", str(parallel), *(["--threads", str(threads)] if threads else [])]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, int(m.group(1))


def one(client, i: int, max_tokens: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    first, tokens = None, 0
    for ch in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], max_tokens=max_tokens,
            seed=i, stream=True, stream_options={"include_usage": True}):
        if first is None and ch.choices and ch.choices[0].delta.content:
            first = time.perf_counter() - t0
        if ch.usage:
            tokens = ch.usage.completion_tokens
    return tokens, first or 0.0


def run(client, n: int, conc: int, max_tokens: int) -> dict:
    results: list = [None] * n
    nxt = iter(range(n))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            results[i] = one(client, i, max_tokens)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    return {"concurrency": conc, "requests": n, "seconds": round(wall, 2), "tokens": tokens,
            "tok_per_s": tokens / wall, "mean_ttft_s": sum(r[1] for r in results) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="what serve gets (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import openai

    busy = other_busy_processes()
    if busy:
        print("warning: other processes are using the CPU:\n  " + "\n  ".join(busy))
    facts = machine_facts()
    proc, port = start(args.model, args.concurrency, args.threads)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        run(client, 2, 1, 8)  # warm-up
        rows = [run(client, args.requests, 1, args.max_tokens), run(client, args.requests, args.concurrency,
                                                                    args.max_tokens),
                run(client, args.requests, 1, args.max_tokens)]
        import json
        import urllib.request

        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    seq = (rows[0]["tok_per_s"] + rows[2]["tok_per_s"]) / 2
    for r in rows:
        r["ratio_to_sequential"] = r["tok_per_s"] / seq
    print(table(["concurrency", "requests", "seconds", "tokens", "tok/s", "mean TTFT s", "x sequential"],
                [[r["concurrency"], r["requests"], r["seconds"], r["tokens"], f"{r['tok_per_s']:.1f}",
                  f"{r['mean_ttft_s']:.3f}", f"{r['ratio_to_sequential']:.2f}"] for r in rows]))
    print(f"scheduler: max batch {health['scheduler_max_batch']}, rounds {health['scheduler_rounds']}")
    save_results("serve_throughput", {"machine": facts, "args": vars(args), "runs": rows, "health": health},
                 Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
