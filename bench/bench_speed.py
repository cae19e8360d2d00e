#!/usr/bin/env python
"""``userlm-local bench`` per candidate, the code before issue 24 and now, side by side in one run
(issue 24's target: the wall time per candidate at 64 intents at least 3x lower).

    python bench/bench_speed.py                        # 64 intents, default UserLM F16 (REF) vs Q8_0
    python bench/bench_speed.py --intents 32 --concurrency 1,8

Both sides bench the same two GGUF files of the default UserLM, converted once by
``convert default`` (F16 as REF: the float32 merge on torch would add the same REF cost to both
sides and say nothing about a candidate; Q8_0 as the candidate), with ``--limit N`` held-out
conversations and as many seeded intents, every other setting at each code's default:

* ``before``: the code before issue 24 (``--old-commit``, default 19c62ca), checked out with
  ``git worktree`` under ``--workdir`` and run from its own ``src`` (old sampler, one conversation
  at a time, 1,000 bootstrap resamples, no robustness probes);
* ``now-cN``: this checkout, ``--concurrency N`` (1 is the default and reproducible bit for bit;
  a larger N batches the campaign's decode steps); it also runs the role/intent probes and
  10,000 resamples, work the old code did not do.

Each side's ``bench.json`` says how many seconds each model took (scoring, campaign, probes).
The ratio is the candidate's total, before / now; REF's seconds are printed beside it.  The sides run
one after another on an otherwise idle machine (``machine`` records what else was busy at the start).
Writes bench/results/bench_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_facts, run_measured, save_results, table

OLD_COMMIT = "19c62ca"  # the parent of 3e6450d, issue 24's first commit


def convert(work: Path) -> tuple[Path, Path]:
    out = work / "gguf"
    ref, cand = out / "smollm2-userlm-F16.gguf", out / "smollm2-userlm-Q8_0.gguf"
    if not (ref.exists() and cand.exists()):
        subprocess.run([sys.executable, "-m", "userlm_local.cli", "convert", "default", "--quant", "f16,q8_0",
                        "--out", str(out), "--force", "--quiet"], check=True)
    return ref, cand


def old_checkout(work: Path, commit: str) -> Path:
    tree = work / f"old-{commit}"
    if not (tree / "src" / "userlm_local").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    return tree


def side(name: str, src: Path, ref: Path, cand: Path, work: Path, intents: int, extra: list[str]) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's report is not this run's
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "userlm_local.cli", "bench", str(ref), str(cand), "--limit", str(intents),
           "--out", str(out), "--quiet", *extra]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    run = run_measured(cmd, env=env, log=work / f"{name}.log")
    if run["rc"] not in (0, 1, 3):  # 1 degraded, 3 inconclusive: verdicts, not failures
        raise SystemExit(f"{name}: bench exited {run['rc']}: {run['output_tail'][-3:]}")
    report = json.loads((out / "bench.json").read_text())
    c = report["candidates"][0]
    return {"cmd": run["cmd"][2:], "rc": run["rc"], "wall_s": run["seconds"], "cpu_s": run["cpu_user_s"] + run["cpu_sys_s"],
            "peak_rss_bytes": run["peak_rss_bytes"], "ref_seconds": report["ref"]["seconds"],
            "cand_seconds": c["seconds"], "cand_total_s": round(sum(c["seconds"].values()), 2),
            "ref_total_s": round(sum(report["ref"]["seconds"].values()), 2), "verdict": c["verdict"],
            "n_conversations": report.get("n_conversations"), "config": report.get("config")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--intents", type=int, default=64)
    ap.add_argument("--concurrency", default="8", help="comma-separated --concurrency values for the new code")
    ap.add_argument("--old-commit", default=OLD_COMMIT)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_speed"))
    ap.add_argument("--skip-old", action="store_true", help="only the new code (no ratio)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    ref, cand = convert(work)
    sides = {}
    if not args.skip_old:
        sides["before"] = side("before", old_checkout(work, args.old_commit) / "src", ref, cand, work, args.intents, [])
    for c in [int(x) for x in args.concurrency.split(",")]:
        sides[f"now-c{c}"] = side(f"now-c{c}", ROOT / "src", ref, cand, work, args.intents, ["--concurrency", str(c)])
    rows = []
    for name, s in sides.items():
        ratio = sides["before"]["cand_total_s"] / s["cand_total_s"] if "before" in sides else None
        secs = s["cand_seconds"]
        rows.append([name, s["n_conversations"], f"{secs.get('scoring', 0):.0f}", f"{secs.get('campaign', 0):.0f}",
                     f"{secs.get('probes', 0):.0f}", f"{s['cand_total_s']:.0f}",
                     "-" if ratio is None else f"{ratio:.2f}x", f"{s['ref_total_s']:.0f}", f"{s['wall_s']:.0f}",
                     s["verdict"]])
    print(table(["code", "conversations", "cand scoring s", "campaign s", "probes s", "cand total s",
                 "before / this", "REF total s", "wall s", "verdict"], rows,
                title=f"bench F16 (REF) vs Q8_0 (candidate), default UserLM, --limit {args.intents}"))
    path = save_results("bench_speed", {"machine": machine, "intents": args.intents, "old_commit": args.old_commit,
                                         "ref": ref.name, "candidate": cand.name, "sides": sides}, args.json)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
