#!/usr/bin/env python
"""Campaign throughput on llama.cpp at concurrency 1, 2, 4, 8: conversations/s and user tokens/s;
and, with ``--drivers rounds,threads``, the campaign's two ways to run conversations side by side.

Both models are local GGUF files: by default the bundled tiny UserLM and tiny assistant,
converted here with the package's converter (``--quant``, default f16) into a temporary
directory.  Every concurrency runs the same campaign (``--intents heldout --limit N``, same
seed, ``--max-turns``, ``--max-new-tokens``) through the real CLI path
(``userlm_local.cli.main(["simulate", ...])``), in this process, with a few read-only hooks:

* ``Campaign.run`` is timed (model loading is not part of the time);
* every ``extend_many`` round of both engines (the user model's and the local assistant's) is
  recorded: its size (conversations, tokens) and time, for the mean batch and how busy each
  engine was;
* ``--drivers threads`` forces the thread-per-conversation path (``Campaign.lockstep`` False:
  what a campaign with two local engines ran before it ran them in rounds on one thread).

Results are ratios to the first run (the first driver at the first concurrency).  Transcripts are
compared with that run (llama.cpp's shared batches change float summation order, so sampled
conversations may diverge; see campaign.py) and, with ``--repeat 2``, with the same settings'
second run: whether a run repeats.

    python bench/campaign_throughput.py
    python bench/campaign_throughput.py --user default --assistant smollm2 --concurrency 1,8   # the default models
    python bench/campaign_throughput.py --limit 32 --concurrency 1,4,8 --quant q8_0
    python bench/campaign_throughput.py --user default --assistant smollm2 --concurrency 8 --drivers rounds,threads --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_facts, other_busy_processes, save_results, table  # noqa: E402

BUNDLED = ROOT / "src" / "userlm_local" / "bundled"


class Hooks:
    """Read-only instrumentation of one simulate run: the campaign's time, and every engine
    round of each scheduler (the user model's and the local assistant's)."""

    def __init__(self):
        import userlm_local.assistants.local as local
        import userlm_local.simulation.campaign as campaign
        from userlm_local.runtime.backends.llama_cpp import LlamaCppBackend

        self.runs, self.assistants = [], []
        self.rounds: dict[str, list] = {"user": [], "assistant": []}
        self.threads = False  # force the thread-per-conversation path
        hooks = self
        orig_run, orig_extend, orig_init = campaign.Campaign.run, LlamaCppBackend.extend_many, local.LocalAssistant.__init__
        orig_lockstep = campaign.Campaign.lockstep

        def run(self, *a, **k):
            hooks.user_backend = self.backend
            t0 = time.perf_counter()
            stats = orig_run(self, *a, **k)
            hooks.runs.append((time.perf_counter() - t0, stats))
            return stats

        def extend_many(backend, work):
            t0 = time.perf_counter()
            out = orig_extend(backend, work)
            side = "user" if backend is getattr(hooks, "user_backend", None) else "assistant"
            hooks.rounds[side].append((len(work), sum(len(ids) for _, ids in work), time.perf_counter() - t0))
            return out

        def init(self, *a, **k):
            orig_init(self, *a, **k)
            hooks.assistants.append(self)

        campaign.Campaign.run = run
        LlamaCppBackend.extend_many = extend_many
        local.LocalAssistant.__init__ = init
        campaign.Campaign.lockstep = property(lambda c: False if hooks.threads else orig_lockstep.fget(c))

    def reset(self):
        self.runs.clear(), self.assistants.clear()
        for v in self.rounds.values():
            v.clear()

    def engine(self, side: str, seconds: float) -> dict:
        r = self.rounds[side]
        return {"rounds": len(r), "max_batch": max((n for n, _, _ in r), default=0),
                "mean_batch": sum(n for n, _, _ in r) / max(len(r), 1),
                "busy_s": round(sum(t for _, _, t in r), 3), "busy_share": sum(t for _, _, t in r) / seconds}


def as_gguf(path: Path, quant: str, tmp: Path, *, assistant: bool) -> Path:
    from userlm_local.artifacts.model_files import model_format

    if model_format(path) == "gguf":
        return path
    from userlm_local.convert import to_gguf

    res = to_gguf(path, tmp / path.name, quant, validate=False, logit_check=False, progress=False,
                  log=lambda m: None, allow_non_userlm=assistant)
    return res.files[0]


def default_model(name: str) -> Path:
    p = BUNDLED / name
    if not (p / "config.json").is_file():
        sys.exit(f"the bundled {name} is not there ({p}); pass --user/--assistant")
    return p


def read_transcripts(path: Path) -> dict[str, list]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["id"]] = [(m["role"], m["content"]) for m in r["messages"]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user", default=None,
                    help="UserLM: GGUF or HF dir, or 'default' (the SmolLM2 UserLM) (default: bundled tiny-userlm)")
    ap.add_argument("--assistant", default=None,
                    help="assistant: GGUF or HF dir, or 'smollm2' (default: bundled tiny-assistant)")
    ap.add_argument("--quant", default="f16", help="type HF checkpoints are converted to (default f16)")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--drivers", default="rounds",
                    help="rounds (the campaign's own choice: one thread, rounds that repeat), threads (a thread "
                         "per conversation, as before), or both comma-separated (default rounds)")
    ap.add_argument("--kv", default="unified",
                    help="llama.cpp KV cache layouts to compare: unified (one cache all sequences share), split "
                         "(a stream per sequence), or unified,split")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each setting (2: does a run repeat?)")
    ap.add_argument("--intents", default="heldout")
    ap.add_argument("--limit", type=int, default=32, help="intents (conversations) per run (default 32)")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sampling", default="paper")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="simulate --threads (default: simulate's own)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/campaign_throughput.json)")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    drivers = args.drivers.split(",")
    if set(drivers) - {"rounds", "threads"}:
        sys.exit(f"--drivers takes rounds and threads, not {args.drivers}")
    layouts = args.kv.split(",")
    if set(layouts) - {"unified", "split"}:
        sys.exit(f"--kv takes unified and split, not {args.kv}")

    from userlm_local import cli
    from userlm_local.runtime.backends import llama_cpp

    busy = other_busy_processes()
    if busy:
        print("warning: other processes are using the CPU, timings will be contended:\n  " + "\n  ".join(busy))
    from userlm_local import defaults

    user_src = (defaults.resolve_user_model(args.user) if args.user in defaults.USER_NAMES
                else Path(args.user) if args.user else default_model("tiny-userlm"))
    asst_src = (defaults.default_assistant_model() if args.assistant == "smollm2"
                else Path(args.assistant) if args.assistant else default_model("tiny-assistant"))
    hooks = Hooks()
    results = []
    with tempfile.TemporaryDirectory(prefix="campaign_throughput-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        user = as_gguf(user_src, args.quant, tmp, assistant=False)
        asst = as_gguf(asst_src, args.quant, tmp, assistant=True)
        print(f"models: user {user.name} ({user.stat().st_size / 2**20:.1f} MiB), assistant {asst.name} "
              f"({asst.stat().st_size / 2**20:.1f} MiB); ready in {time.perf_counter() - t0:.1f} s", flush=True)
        models = {"user": {"source": str(user_src), "gguf": user.name, "bytes": user.stat().st_size},
                  "assistant": {"source": str(asst_src), "gguf": asst.name, "bytes": asst.stat().st_size}}

        def simulate(c: int, limit: int, out: Path) -> None:
            argv = ["simulate", "--user", str(user), "--assistant", str(asst), "--intents", args.intents,
                    "--limit", str(limit), "--concurrency", str(c), "--max-turns", str(args.max_turns),
                    "--max-new-tokens", str(args.max_new_tokens), "--sampling", args.sampling,
                    "--seed", str(args.seed), "--n-ctx", str(args.n_ctx), "--out", str(out), "--overwrite", "--quiet",
                    *(["--threads", str(args.threads)] if args.threads else [])]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):  # the CLI's own summary; we print our table
                rc = cli.main(argv)
            if rc:
                sys.exit(f"simulate failed (rc {rc}): {' '.join(argv)}\n{buf.getvalue()}")

        simulate(1, 2, tmp / "warmup.jsonl")  # warm-up, not recorded
        first, seen = None, {}
        for c in levels:
            for rep in range(args.repeat):
                for driver, kv in [(d, k) for d in drivers for k in layouts]:  # interleaved: alike load
                    hooks.threads = driver == "threads"
                    llama_cpp.KV_SPLIT = kv == "split"
                    hooks.reset()
                    out = tmp / f"{driver}-{kv}-c{c}-{rep}.jsonl"
                    print(f"{driver}, kv {kv}, concurrency {c}, run {rep + 1} ...", flush=True)
                    simulate(c, args.limit, out)
                    (seconds, stats), = hooks.runs
                    engines = {side: hooks.engine(side, seconds) for side in ("user", "assistant")}
                    assistant_tokens = sum(a.tokens_generated for a in hooks.assistants)
                    tr = read_transcripts(out)
                    first = first or tr
                    same = sum(1 for k, v in tr.items() if first.get(k) == v)
                    prev = seen.setdefault((driver, kv, c), tr)
                    results.append({
                        "driver": driver, "kv": kv, "concurrency": c, "run": rep + 1,
                        "seconds": round(seconds, 3), "conversations": stats.done, "turns": stats.turns,
                        "user_tokens": stats.user_tokens, "conv_per_s": stats.done / seconds,
                        "user_tok_per_s": stats.user_tokens / seconds,
                        "assistant_tokens": assistant_tokens, "assistant_tok_per_s": assistant_tokens / seconds,
                        "all_tok_per_s": (stats.user_tokens + assistant_tokens) / seconds,
                        "kv_reuse": stats.cached / max(stats.cached + stats.prefilled, 1),
                        "ended_by": dict(stats.ended_by), "errors": list(stats.errors),
                        "engines": engines,
                        "transcripts_same_as_first": f"{same}/{len(tr)}",
                        "transcripts_same_as_run_1": f"{sum(1 for k, v in tr.items() if prev.get(k) == v)}/{len(tr)}",
                        "busy_processes_after": other_busy_processes(),
                    })
                    r = results[-1]
                    print(f"    {seconds:.1f} s, {r['conv_per_s']:.3f} conv/s, {r['user_tok_per_s']:.1f} user tok/s, "
                          f"{r['assistant_tok_per_s']:.1f} assistant tok/s; same as run 1: "
                          f"{r['transcripts_same_as_run_1']}; "
                          + "; ".join(f"{side}: {e['rounds']} rounds, mean batch {e['mean_batch']:.2f}, "
                                      f"busy {e['busy_share']:.0%}" for side, e in engines.items()), flush=True)

    base = results[0]
    rows = []
    for r in results:
        r["conv_per_s_ratio"] = r["conv_per_s"] / base["conv_per_s"]
        r["user_tok_per_s_ratio"] = r["user_tok_per_s"] / base["user_tok_per_s"]
        r["all_tok_per_s_ratio"] = r["all_tok_per_s"] / base["all_tok_per_s"]
        rows.append([r["driver"], r.get("kv", "unified"), r["concurrency"], r["run"], r["conversations"], r["turns"], r["user_tokens"], r["assistant_tokens"],
                     f"{r['seconds']:.1f}", f"{r['conv_per_s']:.3f}", f"{r['conv_per_s_ratio']:.2f}",
                     f"{r['user_tok_per_s']:.1f}", f"{r['assistant_tok_per_s']:.1f}",
                     f"{r['all_tok_per_s']:.1f}", f"{r['all_tok_per_s_ratio']:.2f}",
                     f"{r['engines']['user']['mean_batch']:.2f}", f"{r['engines']['assistant']['mean_batch']:.2f}",
                     f"{r['engines']['user']['busy_share']:.0%}", f"{r['engines']['assistant']['busy_share']:.0%}",
                     r["transcripts_same_as_first"], r["transcripts_same_as_run_1"]])
    record = {"benchmark": "campaign_throughput", "machine": machine_facts(), "models": models,
              "config": {k: getattr(args, k) for k in ("intents", "limit", "max_turns", "max_new_tokens", "sampling",
                                                       "seed", "n_ctx", "quant", "threads", "drivers", "kv",
                                                       "repeat")},
              "results": results}
    m = record["machine"]
    title = (f"\ncampaign_throughput: {user_src.name} vs {asst_src.name} ({args.quant.upper()} GGUF, llama.cpp), "
             f"{args.limit} conversations x <= {args.max_turns} user turns, <= {args.max_new_tokens} tokens/turn; "
             f"{m['cpu_model']}, {m['cores']} cores, {m['date_utc']}")
    print(table(["driver", "kv", "conc", "run", "convs", "turns", "user tok", "asst tok", "wall s", "conv/s", "x first", "user tok/s",
                 "asst tok/s", "all tok/s", "x first", "user batch", "asst batch", "user busy", "asst busy",
                 "same as first", "same as run 1"], rows, title))
    path = save_results("campaign_throughput", record, Path(args.json) if args.json else None)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
