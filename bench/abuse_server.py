#!/usr/bin/env python
"""``userlm-local serve`` under abuse: a well-formed client's latency with and without it, side by side.

Starts the server as a user would (default: the default assistant, SmolLM2-135M-Instruct on
llama.cpp), then runs one well-formed client (the official ``openai`` client, one short chat
completion after another, ``--max-tokens`` each) for ``--seconds`` in each phase:

* ``none``: nothing else;
* ``slowloris``: ``--half-open`` connections that send part of their headers and never finish,
  topped up as the server closes them;
* ``giant``: a client sending ``'prompt': ['hi'] * 2000`` completions and 32-prompt completions it
  leaves after 1 s, one after another;
* ``disconnect``: three clients opening streams and leaving after two chunks, over and over;
* ``none`` again (the two quiet phases bracket the machine's state).

Reported per phase: requests served, p50/p99 latency of the well-formed client, requests that
failed, abuse actions, and the server's memory (RSS at the phase's end, peak so far) and open
descriptors.  The results go to ``bench/results/abuse_server.json``.

    python bench/abuse_server.py
    python bench/abuse_server.py --model tiny --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, other_busy_processes, save_results, table

HI = [{"role": "user", "content": "Write a haiku about the sea."}]


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def slowloris(port: int, count: int, stop: threading.Event, actions: list) -> None:
    held: list[socket.socket] = []
    while not stop.is_set():
        while len(held) < count and not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                time.sleep(0.05)
                break
            held.append(s)
            actions[0] += 1
        closed, _, _ = select.select(held, [], [], 0.2)
        for s in closed:
            s.close()
            held.remove(s)
    for s in held:
        s.close()


def giant(openai, port: int, stop: threading.Event, actions: list) -> None:
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=1)
    while not stop.is_set():
        for prompt in (["hi"] * 2000, ["Once upon a time"] * 32):
            try:
                c.completions.create(model="default", prompt=prompt, max_tokens=200)
            except openai.APIError:
                pass
            actions[0] += 1


def disconnect(openai, port: int, stop: threading.Event, actions: list) -> None:
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
    while not stop.is_set():
        try:
            stream = c.chat.completions.create(model="default", messages=HI, max_tokens=500, stream=True)
            for i, _ in enumerate(stream):
                if i == 2:
                    break
            stream.close()
        except openai.APIError:
            pass
        actions[0] += 1


def phase(openai, name: str, port: int, pid: int, args) -> dict:
    stop, actions = threading.Event(), [0]
    abusers = {"none": [], "slowloris": [lambda: slowloris(port, args.half_open, stop, actions)],
               "giant": [lambda: giant(openai, port, stop, actions)],
               "disconnect": [lambda: disconnect(openai, port, stop, actions)] * 3}[name]
    threads = [threading.Thread(target=f, daemon=True) for f in abusers]
    for t in threads:
        t.start()
    time.sleep(1.0 if threads else 0)  # the abuse under way before the client starts
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
    lat, failed, end = [], 0, time.monotonic() + args.seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            c.chat.completions.create(model="default", messages=HI, max_tokens=args.max_tokens, temperature=0)
            lat.append(time.monotonic() - t0)
        except openai.APIError as exc:
            failed += 1
            print(f"  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
        json.loads(r.read())
    health_s = time.monotonic() - t0
    mem, fds = status_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))
    stop.set()
    for t in threads:
        t.join(timeout=60)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0] if lat else 0] * 99
    return {"phase": name, "served": len(lat), "failed": failed, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98],
            "abuse_actions": actions[0], "health_s": health_s, "rss_mib": mem["VmRSS"] / 1024,
            "peak_rss_mib": mem["VmHWM"] / 1024, "fds": fds}


def main() -> int:
    import openai

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="what serve is given (default: the default assistant)")
    ap.add_argument("--seconds", type=float, default=20.0, help="each phase's length (default 20)")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per well-formed request (default 8)")
    ap.add_argument("--half-open", type=int, default=2000, help="slowloris connections held (default 2000)")
    args = ap.parse_args()
    busy = other_busy_processes()
    cmd = [sys.executable, "-m", "userlm_local.cli", "serve", *([args.model] if args.model else []), "--port", "0",
           "--max-tokens", str(args.max_tokens), "--parallel", "4"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    port = int(re.search(r":(\d+)/v1", line).group(1))
    rows = []
    try:
        for name in ("none", "slowloris", "giant", "disconnect", "none"):
            print(f"phase {name} ...", file=sys.stderr, flush=True)
            rows.append(phase(openai, name, port, proc.pid, args))
    finally:
        proc.terminate()
        log = proc.communicate(timeout=60)[1]
    print(table(["phase", "served", "failed", "p50 ms", "p99 ms", "abuse actions", "/health s", "RSS MiB",
                 "peak RSS MiB", "fds"],
                [[r["phase"], r["served"], r["failed"], f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", r["abuse_actions"],
                  f"{r['health_s']:.3f}", f"{r['rss_mib']:.0f}", f"{r['peak_rss_mib']:.0f}", r["fds"]] for r in rows],
                title=f"serve {args.model or '(default assistant)'}: a well-formed client, {args.seconds:g} s per phase"))
    if busy:
        print("other busy processes during the run: " + "; ".join(busy))
    tracebacks = log.count("Traceback")
    print(f"server log: {len(log.splitlines())} lines, {tracebacks} tracebacks")
    save_results("abuse_server", {"machine": machine_facts(), "args": vars(args), "phases": rows,
                                  "other_busy": busy, "log_tracebacks": tracebacks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
