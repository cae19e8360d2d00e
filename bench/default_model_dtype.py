"""Which dtype should the default UserLM's first-use build write?  F16 vs Q8_0, side by side.

Merges the bundled adapter into SmolLM2-135M-Instruct once, converts the merged model to F16
and Q8_0 with our converter (validation on: Q8_0's KLD and top-1 agreement against the F16 file),
then measures each file's size, prefill and decode speed (greedy, same prompt, same threads).

    python bench/default_model_dtype.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402

from userlm_local.defaults import model as dm  # noqa: E402


def speed(path: Path, threads: int, prompt_tokens: int = 512, new_tokens: int = 128) -> dict:
    from userlm_local.runtime.backends.llama_cpp import load

    backend = load(path, n_ctx=prompt_tokens + new_tokens + 8, n_batch=512, threads=threads)
    fmt = backend.fmt
    text = "Tell me about the history of the bicycle and how its design changed over time. " * 40
    ids = fmt.render([{"role": "system", "content": text}])[-prompt_tokens:]
    best_pre = best_dec = 0.0
    for _ in range(3):
        s = backend.new_session()
        t0 = time.perf_counter()
        logits = s.extend(ids)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            logits = s.extend([int(logits.argmax())])
        t2 = time.perf_counter()
        s.close()
        best_pre = max(best_pre, len(ids) / (t1 - t0))
        best_dec = max(best_dec, new_tokens / (t2 - t1))
    backend.close()
    return {"prefill_tok_s": round(best_pre, 1), "decode_tok_s": round(best_dec, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from userlm_local.convert.pipeline import to_gguf

    meta = dm.adapter_meta()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        dm.write_hf(d / "hf", meta)
        merge_s = time.perf_counter() - t0
        res = {}
        for q in ("f16", "q8_0"):
            t0 = time.perf_counter()
            r = to_gguf(d / "hf", d / q, q, name="smollm2-userlm", logit_check=False, progress=False,
                        log=lambda m: None)
            art = r.manifest["artifacts"][0]
            path = d / q / art["file"]
            res[q] = {"bytes": path.stat().st_size, "convert_s": round(time.perf_counter() - t0, 1),
                      "logits_vs_f16": art["validation"].get("logits") if q != "f16" else None,
                      **speed(path, args.threads)}
    rows = [[q.upper(), f"{r['bytes'] / 2**20:.0f} MiB", r["convert_s"], r["prefill_tok_s"], r["decode_tok_s"],
             f"{r['logits_vs_f16']['mean_kld']:.2e}" if r["logits_vs_f16"] else "-",
             f"{100 * r['logits_vs_f16']['top1_agreement']:.1f}%" if r["logits_vs_f16"] else "-"] for q, r in res.items()]
    print(f"merge (numpy, adapter into the dequantized base, write F32 safetensors): {merge_s:.1f} s")
    print(table(["dtype", "size", "convert s", "prefill tok/s", "decode tok/s", "KLD vs F16", "top-1 vs F16"], rows))
    save_results("default_model_dtype", {"machine": machine_facts(), "threads": args.threads,
                                         "merge_seconds": round(merge_s, 1), "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
