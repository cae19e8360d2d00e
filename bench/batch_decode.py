#!/usr/bin/env python
"""What a batched decode round costs on llama.cpp's CPU backend: ms per round and tokens/s at
batch 1, 4 and 8, with 1 and 2 threads, for the default assistant (SmolLM2-135M-Instruct, Q4_1)
and the default UserLM (Q8_0), side by side in one run.  It bounds what batching conversations
can gain (bench/README.md, campaign_throughput).  ``--assistant-types`` adds the same assistant
re-quantized by llama.cpp from its Q4_1 file into other weight types (in a temporary
directory), to show which types batch well on this CPU.

    python bench/batch_decode.py            # writes bench/results/batch_decode.json
    python bench/batch_decode.py --assistant-types q8_0,q4_0,f16 --threads 2 --json bench/results/batch_decode-types.json
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


def rounds(path: Path, threads: int, batch: int, n: int) -> float:
    from userlm_local.runtime.backends import load_backend

    b = load_backend(path, allow_non_userlm=True, n_ctx=512, n_seq_max=8, threads=threads)
    try:
        sessions = [b.new_session() for _ in range(batch)]
        b.extend_many([(s, list(range(1, 33))) for s in sessions])  # a 32-token prompt each
        t0 = time.perf_counter()
        for i in range(n):
            b.extend_many([(s, [100 + i]) for s in sessions])
        return (time.perf_counter() - t0) / n
    finally:
        b.close()


def requantize(src: Path, dest: Path, label: str) -> Path:
    """``src`` re-quantized to ``label`` by llama.cpp (allow_requantize: the source is Q4_1)."""
    from userlm_local.convert.quantize import llama_cpp_module

    ll = llama_cpp_module()
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, "LLAMA_FTYPE_ALL_F32" if label == "f32" else f"LLAMA_FTYPE_MOSTLY_{label.upper()}")
    params.allow_requantize = True
    if ll.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not re-quantize {src} to {label}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--assistant-types", default="",
                    help="comma-separated GGUF types to re-quantize the assistant to, e.g. q8_0,q4_0,f16")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes (default 1,4,8)")
    ap.add_argument("--no-userlm", action="store_true", help="skip the UserLM rows")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from userlm_local.defaults import default_assistant_model, default_user_model

    facts = machine_facts()
    tmp = tempfile.TemporaryDirectory(prefix="batch-decode-")
    models = [("assistant Q4_1", default_assistant_model())]
    for label in filter(None, (t.strip() for t in args.assistant_types.split(","))):
        models.append((f"assistant {label.upper()} (from Q4_1)",
                       requantize(default_assistant_model(), Path(tmp.name) / f"assistant-{label}.gguf", label)))
    if not args.no_userlm:
        models.append(("UserLM Q8_0", default_user_model()))
    rows = []
    for name, path in models:
        for threads in (int(t) for t in args.threads.split(",")):
            base = None
            for batch in (int(b) for b in args.batches.split(",")):
                sec = rounds(path, threads, batch, args.rounds)
                base = base or sec
                rows.append({"model": name, "threads": threads, "batch": batch, "ms_per_round": round(sec * 1e3, 2),
                             "tok_per_s": round(batch / sec, 1), "tok_per_s_vs_batch1": round(batch * base / sec, 2)})
                print(rows[-1], flush=True)
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    save_results("batch_decode", {"machine": facts, "args": vars(args), "results": rows},
                 Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
