#!/usr/bin/env python
"""Time to the user's next turn at turns 1..N of a growing conversation, on llama.cpp (or on
ONNX Runtime GenAI with ``--format onnx``):
KV reuse (one SimulatedUser over one persistent session) vs re-prefilling the whole history
every turn (a fresh session per turn, same tokens).

At every turn both paths start from the same conversation (a copy of the token ids) and the
same RNG state, and generate exactly ``--max-new-tokens`` tokens (the stop tokens are banned,
so every turn has the same length on both paths); the sampled ids are compared.  The paths
alternate which goes first, and each turn's time is the median over ``--repeats`` runs of the
same conversation.  Assistant replies are fixed texts of realistic length (~85-135 tokens).

    python bench/turn_latency.py                         # the bundled tiny UserLM (converted to GGUF F16)
    python bench/turn_latency.py --model path/to/model.gguf --turns 6
    python bench/turn_latency.py --model path/to/hf_checkpoint_dir --quant q8_0
    python bench/turn_latency.py --format onnx --quant int4   # converted with convert --to onnx
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_facts, other_busy_processes, save_results, table  # noqa: E402

INTENT = ("You are a user who wants to implement a special type of sequence. The sequence sums up the two "
          "previous numbers in the sequence and adds 1 to the result. The first two numbers in the sequence "
          "are 1 and 1.")

# Fixed assistant replies: 85-130 tokens each with the Llama-3 tokenizer, 90-134 with the bundled tiny one.
REPLIES = [
    "Sure! That sounds like a variation of the Fibonacci sequence. If I understand correctly, each term is "
    "the sum of the two previous terms plus one, starting with 1 and 1. So the sequence would go 1, 1, 3, 5, "
    "9, 15, 25, and so on. Which programming language would you like to use, and do you need the whole "
    "sequence or just the n-th term?",
    "Great, here is a simple Python version that returns the first n terms:\n\n```python\ndef sequence(n):\n"
    "    terms = [1, 1]\n    while len(terms) < n:\n        terms.append(terms[-1] + terms[-2] + 1)\n"
    "    return terms[:n]\n```\n\nCalling `sequence(7)` gives `[1, 1, 3, 5, 9, 15, 25]`. Let me know if "
    "you want it as a generator instead.",
    "Good question. The list version keeps every term in memory, which is fine for a few thousand terms. "
    "A generator avoids that:\n\n```python\ndef sequence_gen():\n    a, b = 1, 1\n    yield a\n    yield b\n"
    "    while True:\n        a, b = b, a + b + 1\n        yield b\n```\n\nYou can take the first n terms "
    "with `itertools.islice(sequence_gen(), n)`.",
    "If you only need the n-th term, there is a closed form. Adding 1 to every term turns it into a "
    "Fibonacci-like sequence: if s(n) is our sequence, then s(n) + 1 = 2 * F(n), where F is the usual "
    "Fibonacci sequence with F(1) = F(2) = 1. So s(n) = 2 * F(n) - 1, and you can compute F(n) quickly "
    "with matrix exponentiation or the fast doubling method.",
    "Here is the fast doubling method, which runs in O(log n) multiplications:\n\n```python\ndef fib(n):\n"
    "    if n == 0:\n        return (0, 1)\n    a, b = fib(n // 2)\n    c = a * (2 * b - a)\n    d = a * a + b * b\n"
    "    return (d, c + d) if n % 2 else (c, d)\n\ndef s(n):\n    return 2 * fib(n)[0] - 1\n```\n\n"
    "For example, `s(10)` returns 109.",
    "You are right to check the edge cases. For n = 1 and n = 2 the formula gives 2 * 1 - 1 = 1, which "
    "matches the two starting values. For n = 0 it would return -1, which is not part of the sequence, so "
    "you may want to raise a ValueError for n < 1. Python integers have no overflow, so large n works, "
    "although the numbers grow exponentially.",
    "To test it, compare the closed form with the simple loop for the first few hundred terms:\n\n"
    "```python\ndef test_closed_form():\n    terms = sequence(300)\n    for i, t in enumerate(terms, start=1):\n"
    "        assert s(i) == t\n```\n\nRun it with pytest. If both agree, you can be fairly confident "
    "the fast version is correct.",
    "Sure, here is the same thing in JavaScript. Note that JavaScript numbers lose precision above "
    "2^53, so use BigInt for large n:\n\n```javascript\nfunction s(n) {\n  let a = 1n, b = 1n;\n"
    "  if (n <= 2) return 1n;\n  for (let i = 3; i <= n; i++) {\n    [a, b] = [b, a + b + 1n];\n  }\n"
    "  return b;\n}\n```",
    "The loop is O(n) and each addition gets slower as the numbers grow, so for n around a million it "
    "will take a few seconds. The fast doubling version needs only about 20 steps for n = 1,000,000, "
    "but each step multiplies very large integers. In practice, for n below 10,000 either version is "
    "instant, so pick whichever is easier to read.",
    "You're welcome! To summarize: the sequence is s(n) = s(n-1) + s(n-2) + 1 with s(1) = s(2) = 1, it "
    "equals 2 * F(n) - 1, the generator is the easiest way to list terms, and fast doubling gives the n-th "
    "term quickly. Is there anything else you would like to add, such as memoization or a command-line "
    "interface?",
]


def resolve_model(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for cand in (ROOT / "src" / "userlm_local" / "bundled" / "tiny-userlm", ROOT / "tests" / ".cache" / "tiny-userlm-v1"):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    sys.exit("no model: the bundled tiny UserLM is not there yet; pass --model (GGUF file or HF checkpoint dir)")


def as_gguf(path: Path, quant: str, tmp: Path) -> tuple[Path, str]:
    """A GGUF file for ``path``: itself, or converted with the package's converter."""
    from userlm_local.artifacts.model_files import model_format

    if model_format(path) == "gguf":
        return path, "given"
    from userlm_local.convert import to_gguf

    t0 = time.perf_counter()
    res = to_gguf(path, tmp, quant, validate=False, logit_check=False, progress=False, log=lambda m: None,
                  allow_non_userlm=False)
    return res.files[0], f"converted to {quant.upper()} in {time.perf_counter() - t0:.1f} s"


def as_onnx(path: Path, quant: str, tmp: Path) -> tuple[Path, str]:
    """An ONNX model directory for ``path``: itself, or converted with the package's exporter."""
    from userlm_local.artifacts.model_files import model_format

    if model_format(path) == "onnx":
        return path, "given"
    from userlm_local.convert.onnx_pipeline import to_onnx

    t0 = time.perf_counter()
    res = to_onnx(path, tmp, quant, validate=False, logit_check=False, progress=False, log=lambda m: None)
    return res.files[0], f"converted to ONNX {quant.upper()} in {time.perf_counter() - t0:.1f} s"


def clone_conversation(conv):
    c = copy.copy(conv)
    c.tokens, c.spans = list(conv.tokens), list(conv.spans)
    c.messages = [dict(m) for m in conv.messages]
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file or HF checkpoint dir (default: the bundled tiny UserLM)")
    ap.add_argument("--format", default="gguf", choices=("gguf", "onnx"), help="backend: llama.cpp (gguf) or onnx")
    ap.add_argument("--quant", default=None, help="type to convert an HF checkpoint to (default f16; onnx: int4)")
    ap.add_argument("--turns", type=int, default=10, help="user turns (default 10)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="tokens per user turn, exactly (default 48)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the conversation; medians are reported")
    ap.add_argument("--sampling", default="greedy", help="sampling preset (default greedy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--verbose", action="store_true", help="print every turn as it is measured (slow models)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/turn_latency.json)")
    args = ap.parse_args()
    if not 1 <= args.turns <= len(REPLIES) + 1:
        ap.error(f"--turns must be between 1 and {len(REPLIES) + 1}")

    from userlm_local.runtime.sampling import ban, preset
    from userlm_local.simulation.user import SimulatedUser, UserSimulator

    busy = other_busy_processes()
    if busy:
        print("warning: other processes are using the CPU, timings will be contended:\n  " + "\n  ".join(busy))
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="turn_latency-") as tmp:
        if args.format == "onnx":
            from userlm_local.runtime.backends.onnx import load as load_onnx

            path, how = as_onnx(model, args.quant or "int4", Path(tmp))
            size = sum(f.stat().st_size for f in path.glob("model.onnx*"))
            backend = load_onnx(path, n_ctx=args.n_ctx, threads=args.threads)
        else:
            from userlm_local.runtime.backends.llama_cpp import load

            path, how = as_gguf(model, args.quant or "f16", Path(tmp))
            size = path.stat().st_size
            backend = load(path, n_ctx=args.n_ctx, n_seq_max=2, threads=args.threads)
        try:
            rows, record = run(backend, args, SimulatedUser, UserSimulator, ban, preset)
        finally:
            backend.close()
    meta = getattr(backend, "meta", None)
    record["busy_processes_after"] = other_busy_processes()
    record.update({
        "benchmark": "turn_latency", "machine": machine_facts(),
        "model": {"path": str(model), "backend": backend.name, "how": how,
                  **({"file_type": meta.get("general.file_type"), "n_layer": meta.get("llama.block_count"),
                      "hidden": meta.get("llama.embedding_length"), "n_vocab": backend.n_vocab} if meta else
                     {"quant": backend.info.dtype, "n_layer": backend.info.num_layers,
                      "hidden": backend.info.hidden_size, "n_vocab": backend.info.vocab_size}),
                  "context_length": backend.context_length, "bytes": size},
        "config": {"turns": args.turns, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                   "sampling": args.sampling, "seed": args.seed, "threads": args.threads or "all cores",
                   "n_ctx": args.n_ctx},
    })
    m = record["machine"]
    title = (f"\nturn_latency: {model.name} ({how}; {record['model']['bytes'] / 2**20:.1f} MiB "
             f"{'ONNX' if args.format == 'onnx' else 'GGUF'}, {backend.name}) on "
             f"{m['cpu_model']}, {m['cores']} cores, {m['date_utc']}\n"
             f"{args.max_new_tokens} tokens per user turn, {args.sampling}, median of {args.repeats}")
    print(table(["turn", "history tok", "prefill reuse", "prefill fresh", "ms reuse", "ms fresh",
                 "fresh/reuse", "same ids"], rows, title))
    tot = record["totals"]
    print(f"\nall {args.turns} turns: {tot['ms_reuse']:.0f} ms with reuse, {tot['ms_fresh']:.0f} ms without "
          f"({tot['ratio']:.2f}x); last turn {record['turns'][-1]['ratio']:.2f}x; "
          f"sampled ids identical on {tot['same_ids']}/{tot['compared']} turns")
    default = None if args.format == "gguf" else Path(__file__).resolve().parent / "results" / "turn_latency-onnx.json"
    path = save_results("turn_latency", record, Path(args.json) if args.json else default)
    print(f"results: {path}")
    return 0


def run(backend, args, SimulatedUser, UserSimulator, ban, preset):
    sim = UserSimulator(backend, sampling=preset(args.sampling), max_new_tokens=args.max_new_tokens)
    sim.processors.append(ban(sim.fmt.ids.stop_ids))  # fixed-length turns on both paths
    tok = sim.fmt.tokenizer
    reply_tokens = [len(tok.encode(r)) for r in REPLIES]
    need = (len(sim.fmt.start()) + len(tok.encode(INTENT)) + 16 + args.turns * (args.max_new_tokens + 12)
            + sum(reply_tokens[:args.turns - 1]))
    if need > backend.context_length:
        sys.exit(f"{args.turns} turns need about {need} tokens, more than the context of {backend.context_length}: "
                 "pass fewer --turns or a smaller --max-new-tokens")

    def one_conversation(rep: int, timed: bool):
        user = sim.start(INTENT, seed=args.seed, key=("turn_latency",))
        out = []
        for k in range(args.turns):
            conv, noise = clone_conversation(user.conversation), user.noise  # keyed noise: immutable, shared
            history = len(conv.tokens)
            fresh_user = SimulatedUser(sim, conv, backend.new_session(), noise)
            res = {}
            paths = [("reuse", user), ("fresh", fresh_user)]
            for name, u in (paths if (rep + k) % 2 == 0 else paths[::-1]):
                t0 = time.perf_counter()
                turn = u.next_turn()
                res[name] = (time.perf_counter() - t0, turn)
            fresh_user.session.close()
            (t_r, turn_r), (t_f, turn_f) = res["reuse"], res["fresh"]
            out.append({"turn": k + 1, "history_tokens": history,
                        "prefill_reuse": turn_r.usage["prefill_tokens"], "cached_reuse": turn_r.usage["cached_tokens"],
                        "prefill_fresh": turn_f.usage["prefill_tokens"],
                        "generated": len(turn_r.token_ids), "generated_fresh": len(turn_f.token_ids),
                        "ms_reuse": t_r * 1e3, "ms_fresh": t_f * 1e3, "same_ids": turn_r.token_ids == turn_f.token_ids})
            if args.verbose:
                o = out[-1]
                print(f"  {'run ' + str(rep) if timed else 'warm-up'} turn {k + 1}: history {history}, "
                      f"reuse {o['ms_reuse']:.0f} ms, fresh {o['ms_fresh']:.0f} ms", flush=True)
            if k < args.turns - 1:
                user.add_assistant(REPLIES[k])
        user.session.close()
        return out

    one_conversation(0, timed=False)  # warm-up (allocations, page cache), not recorded
    runs = [one_conversation(rep, timed=True) for rep in range(args.repeats)]
    turns, rows = [], []
    for k in range(args.turns):
        per = [r[k] for r in runs]
        ms_r = statistics.median(p["ms_reuse"] for p in per)
        ms_f = statistics.median(p["ms_fresh"] for p in per)
        t = {**{key: per[0][key] for key in ("turn", "history_tokens", "prefill_reuse", "cached_reuse",
                                             "prefill_fresh", "generated", "generated_fresh")},
             "ms_reuse": round(ms_r, 2), "ms_fresh": round(ms_f, 2), "ratio": round(ms_f / ms_r, 3),
             "ms_reuse_all": [round(p["ms_reuse"], 2) for p in per],
             "ms_fresh_all": [round(p["ms_fresh"], 2) for p in per],
             "same_ids": all(p["same_ids"] for p in per)}
        turns.append(t)
        rows.append([t["turn"], t["history_tokens"], t["prefill_reuse"], t["prefill_fresh"], f"{ms_r:.1f}",
                     f"{ms_f:.1f}", f"{ms_f / ms_r:.2f}", "yes" if t["same_ids"] else "NO"])
    tot_r, tot_f = sum(t["ms_reuse"] for t in turns), sum(t["ms_fresh"] for t in turns)
    record = {"turns": turns, "reply_tokens": reply_tokens[:args.turns - 1],
              "totals": {"ms_reuse": round(tot_r, 1), "ms_fresh": round(tot_f, 1), "ratio": round(tot_f / tot_r, 3),
                         "same_ids": sum(t["same_ids"] for t in turns), "compared": len(turns)}}
    return rows, record


if __name__ == "__main__":
    sys.exit(main())
