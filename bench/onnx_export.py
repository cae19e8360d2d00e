#!/usr/bin/env python
"""ONNX export benchmark: our streaming exporter vs onnxruntime-genai's model builder.

On a random-weight checkpoint of UserLM-8b's shape (or the 1B one; ``devkit.checkpoints``),
each tool runs in its own process, one after the other, from a cold page cache when it can be
dropped:

  builder   python -m onnxruntime_genai.models.builder -i SRC -o OUT -p int4 -e cpu
            (temporary HOME, HF_HUB_OFFLINE=1, --extra_options hf_token=false)
  ours      userlm-local convert SRC --to onnx --quant int4 --no-validate

with an address-space limit of the memory available at the start (an allocation then fails
instead of the kernel's OOM killer taking the machine down), recording wall and CPU seconds,
peak RSS (``ru_maxrss``), and how a tool failed.  Target (issue 11): ours at most a quarter of
the builder's peak RSS on 1B, and the 8B export completes here.

``--agreement`` also exports fp32 with both tools and compares their logits on the same
conversation in onnxruntime-genai (target KLD <= 1e-4).  Every output is deleted after it
is measured; the source at the end unless --keep.

    python bench/onnx_export.py --shape 1b --agreement      # ~2.5 GB source
    python bench/onnx_export.py --shape 8b                   # ~16 GB source, 25 GB free disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, drop_page_cache, gib, machine_facts, run_measured, save_results, table  # noqa: E402
from userlm_local.devkit.checkpoints import SHAPES, hf_tensors, userlm_config, write_checkpoint  # noqa: E402
from userlm_local.util.machine import meminfo  # noqa: E402

CACHE = ROOT / "tests" / ".cache"


def builder_cmd(src: Path, out: Path, precision: str, cache: Path) -> list:
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", src, "-o", out, "-p", precision,
            "-e", "cpu", "-c", cache, "--extra_options", "hf_token=false"]


def ours_cmd(src: Path, out: Path, precision: str) -> list:
    return [Path(sys.executable).parent / "userlm-local", "convert", src, "--to", "onnx", "--quant", precision,
            "--out", out, "--no-validate", "--quiet"]


RUN_CHECK = """
import json, sys, time
import numpy as np
from userlm_local.runtime.backends.onnx import load
t0 = time.perf_counter()
b = load(sys.argv[1], n_ctx=512)
t1 = time.perf_counter()
s = b.new_session()
ids = b.fmt.render([{"role": "system", "content": "You want help planning a week in Kyoto."}])
last = s.extend(ids)
t2 = time.perf_counter()
out = []
for _ in range(16):
    out.append(int(np.argmax(last)))
    last = s.extend([out[-1]])
t3 = time.perf_counter()
print(json.dumps({"load_s": round(t1 - t0, 2), "prompt_tokens": len(ids), "prefill_s": round(t2 - t1, 3),
                  "decode_tok_s": round(16 / (t3 - t2), 2), "finite": bool(np.isfinite(last).all()),
                  "decoded": out}))
"""


def agreement(a: Path, b: Path, src: Path) -> dict:
    """KL(builder || ours) and same top-1 over one rendered conversation, both in onnxruntime-genai."""
    from userlm_local.runtime.backends.onnx import load
    from userlm_local.convert.calibration import builtin_conversations, render
    from userlm_local.convert.validate import compare_logits
    from userlm_local.text.prompt_format import ChatFormat
    from userlm_local.text.tokenizer import Tokenizer

    ids = render(ChatFormat(Tokenizer.from_dir(src)), builtin_conversations()[0])[:128]
    out = []
    for d in (a, b):
        backend = load(d, n_ctx=256)
        out.append(backend.logits(ids))
        backend.close()
    cmp = compare_logits([out[0]], [out[1]])
    cmp["max_abs_logit_diff"] = float(np.abs(out[0] - out[1]).max())
    return cmp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--src", default=None, help="use this checkpoint instead of generating one")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--agreement", action="store_true", help="also export fp32 with both and compare logits")
    ap.add_argument("--skip-builder", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = Path(args.json) if args.json else Path(__file__).resolve().parent / "results" / f"onnx_export-{args.shape}.json"
    log = results.with_suffix(".log")
    cfg = userlm_config(SHAPES[args.shape])
    src_bytes = sum(int(np.prod(s)) * 2 for _, s in hf_tensors(cfg))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnx_export-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    work.mkdir(parents=True, exist_ok=True)
    need = (0 if args.src else src_bytes) + src_bytes * 0.7 + (2 << 30)
    if shutil.disk_usage(work).free < need:
        sys.exit(f"{work}: about {need / 1e9:.0f} GB of free disk needed")
    limit = meminfo("MemAvailable")
    record = {"benchmark": "onnx_export", "machine": machine_facts(), "shape": args.shape,
              "address_space_limit_bytes": limit, "steps": {}, "notes": []}
    src = Path(args.src) if args.src else work / f"userlm-{args.shape}-random"
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    def step(name: str, cmd: list, out: Path) -> dict:
        if not drop_page_cache():
            record["notes"].append("page cache not dropped (not root)")
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        r = run_measured(cmd, env=env, log=log, limit_as=limit)
        r["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.exists() else 0
        record["steps"][name] = r
        print(f"    rc {r['rc']}, {r['seconds']:.1f} s, peak RSS {gib(r['peak_rss_bytes'])} GiB"
              + ("" if r["rc"] == 0 else f"; last output: {r['output_tail'][-1:] }"), flush=True)
        save_results("onnx_export", record, results)
        return r

    try:
        if not args.src:
            print(f"writing a random bf16 {args.shape} checkpoint ({src_bytes / 1e9:.1f} GB) to {src}", flush=True)
            record["source"] = write_checkpoint(src, args.shape, int(5e9), cache=CACHE, log=lambda m: print(m, flush=True))
            record["source"].pop("config", None)
        precisions = ["int4"] + (["fp32"] if args.agreement else [])
        for p in precisions:
            if not args.skip_builder:
                out = work / f"builder-{p}"
                step(f"builder_{p}", builder_cmd(src, out, p, work / "hf-cache"), out)
                shutil.rmtree(work / "hf-cache", ignore_errors=True)
            ours = work / f"ours-{p}"
            if step(f"ours_{p}", ours_cmd(src, ours, p), ours)["rc"] == 0 and p == "int4":
                # it loads in onnxruntime-genai and decodes (greedy, 16 tokens after a rendered prompt)
                mine = next(d for d in ours.iterdir() if d.is_dir())
                r = step("ours_int4_runs", [sys.executable, "-c", RUN_CHECK, mine], ours)
                r["result"] = json.loads(r["output_tail"][-1]) if r["rc"] == 0 and r["output_tail"] else None
                print(f"    {r['result']}", flush=True)
                save_results("onnx_export", record, results)
            if p == "fp32" and record["steps"].get("builder_fp32", {}).get("rc") == 0 \
                    and record["steps"][f"ours_{p}"]["rc"] == 0:
                mine = next(d for d in ours.iterdir() if d.is_dir())
                record["agreement_fp32"] = agreement(work / "builder-fp32", mine, src)
                print(f"    fp32 logits, builder vs ours: {record['agreement_fp32']}", flush=True)
            for d in (work / f"builder-{p}", ours):
                shutil.rmtree(d, ignore_errors=True)
        save_results("onnx_export", record, results)
    finally:
        if not args.keep and not args.src:
            shutil.rmtree(src, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(record)
    return 0


def report(record: dict) -> None:
    steps, rows = record["steps"], []
    for name, s in steps.items():
        if name.endswith("_runs"):
            continue
        ref = steps.get(name.replace("ours", "builder")) if name.startswith("ours") else None
        ratio = (f"{s['peak_rss_bytes'] / ref['peak_rss_bytes']:.3f}" if ref and s["rc"] == 0 else "")
        rows.append([name, "ok" if s["rc"] == 0 else f"FAILED rc={s['rc']}", f"{s['seconds']:.1f}",
                     f"{s['cpu_user_s'] + s['cpu_sys_s']:.0f}", gib(s["peak_rss_bytes"]), gib(s.get("output_bytes")),
                     ratio])
    print(table(["step", "result", "wall s", "cpu s", "peak RSS GiB", "out GiB", "RSS ours/builder"], rows,
                f"\nonnx_export ({record['shape']}) on {record['machine']['cpu_model']}, "
                f"{record['machine']['cores']} cores, limit {gib(record['address_space_limit_bytes'])} GiB"))
    runs = steps.get("ours_int4_runs")
    if runs:
        print(f"ours int4 in onnxruntime-genai: peak RSS {gib(runs['peak_rss_bytes'])} GiB, {runs.get('result')}")


if __name__ == "__main__":
    sys.exit(main())
