#!/usr/bin/env python
"""Conversion benchmark on an 8B-shaped checkpoint: ours vs llama.cpp's convert_hf_to_gguf.py.

The source is UserLM-8b's shape (Llama-3.1-8B: hidden 4096, 32 layers, 32 heads / 8 KV heads,
FFN 14336, rope llama3, untied lm_head) with the real Llama-3.1 vocabulary plus
``<|endconversation|>`` (128257 rows), and random bf16 weights generated here, written shard by
shard (~5 GB each, with model.safetensors.index.json) without holding a shard in memory.

Each tool runs in its own process, one after the other, each starting from a cold page cache
(when the page cache can be dropped, i.e. as root):

  llama.cpp   convert_hf_to_gguf.py SRC --outtype f16          (from the llama-cpp-python sdist)
  ours        userlm-local convert SRC --quant f16 --no-validate
  ours        F16 -> Q4_K_M (userlm_local.convert.quantize, i.e. llama_model_quantize)
  ours        userlm-local convert SRC --quant f16 --no-logit-check   (with the conversion-time
              validation; the torch float32 logits check would need ~32 GB for 8B)

and we record wall seconds, CPU seconds and the process's peak RSS (``ru_maxrss`` from
``os.wait4``; also the sampled anonymous vs file-backed parts).  Target (the issue's): ours at
most half of llama.cpp's peak RSS and no more time.  Every output is deleted after it is
measured; the source is deleted at the end unless --keep.

    python bench/convert_8b.py                      # the real run (~16 GB source, 40 GB free disk)
    python bench/convert_8b.py --shape tiny         # a quick check of the script itself
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
from _common import (ROOT, drop_page_cache, gib, machine_facts, other_busy_processes,  # noqa: E402
                     run_measured, save_results, table)
from userlm_local.devkit.assets import llama_cpp_sdist_tree  # noqa: E402
from userlm_local.devkit.checkpoints import SHAPES, hf_tensors, userlm_config, write_checkpoint  # noqa: E402
from userlm_local.util.machine import meminfo  # noqa: E402

CACHE = ROOT / "tests" / ".cache"  # shared with the test suite's fixtures

# ------------------------------------------------------------------ llama.cpp's converter (from the sdist)

def llama_cpp_tree() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, cached where the test suite keeps it."""
    try:
        return llama_cpp_sdist_tree(CACHE)
    except RuntimeError as exc:
        sys.exit(str(exc))


def llama_cpp_env(tree: Path, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "gguf-py"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        # convert_hf_to_gguf.py imports sentencepiece before it finds there is no tokenizer.model;
        # a stub that is never used lets it go on to the tokenizer.json (gpt2) path
        stub = work / "stub" / "sentencepiece"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text("class SentencePieceProcessor:\n    pass\n")
        env["PYTHONPATH"] += os.pathsep + str(stub.parent)
    return env


# ------------------------------------------------------------------ the run

def _mem_available() -> int:
    avail = meminfo("MemAvailable")
    if avail is None:
        raise RuntimeError("no MemAvailable in /proc/meminfo")
    return avail


def manifest_artifact(out: Path) -> dict | None:
    man = out / "manifest.json"
    if not man.exists():
        return None
    arts = json.loads(man.read_text()).get("artifacts") or []
    return arts[0] if arts else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--workdir", default=None, help="where the source and outputs go (default: a temp dir)")
    ap.add_argument("--src", default=None, help="convert this existing checkpoint instead of generating one")
    ap.add_argument("--keep", action="store_true", help="keep the generated source checkpoint")
    ap.add_argument("--shard-gb", type=float, default=5.0, help="safetensors shard size (default 5 GB)")
    ap.add_argument("--no-drop-cache", action="store_true", help="do not drop the page cache before each tool")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: llama_cpp, ours, quantize, validated")
    ap.add_argument("--probe-logit-check", action="store_true",
                    help="last, run the converter with its default options (torch float32 logits check on) under "
                         "an address-space limit of the available memory, and record what it does")
    ap.add_argument("--probe-imatrix", nargs=2, type=int, default=None, metavar=("N", "TOKENS"),
                    help="last, convert to Q4_K_M with an importance matrix computed on N built-in calibration "
                         "conversations of at most TOKENS tokens, and record time and memory")
    ap.add_argument("--json", default=None, help="results file (default bench/results/convert_8b.json for "
                                                 "--shape 8b, else convert_8b-<shape>.json)")
    ap.add_argument("--report", default=None, metavar="JSON", help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"llama_cpp", "ours", "quantize", "validated"}
    if unknown:
        ap.error(f"unknown steps in --skip: {', '.join(sorted(unknown))}")
    if "ours" in skip:
        skip.add("quantize")  # it quantizes our F16
    results_path = Path(args.json) if args.json else (
        Path(__file__).resolve().parent / "results" / ("convert_8b.json" if args.shape == "8b"
                                                         else f"convert_8b-{args.shape}.json"))
    log = results_path.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)

    cfg = userlm_config(SHAPES[args.shape])
    src_bytes = sum(int(np.prod(s)) * 2 for _, s in hf_tensors(cfg))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="convert_8b-",
                                                                             dir=os.environ.get("TMPDIR", "/var/tmp")))
    workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(workdir).free
    # source + one F16 output + Q4_K_M at once; 40 GB for the 8B shape
    need = (0 if args.src else src_bytes) + src_bytes + src_bytes * 0.3 + (2 << 30)
    need = max(need, 40e9) if args.shape == "8b" and not args.src else need
    if free < need:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        sys.exit(f"not enough free disk in {workdir}: {free / 1e9:.1f} GB free, this run needs about "
                 f"{need / 1e9:.0f} GB (source {src_bytes / 1e9:.1f} GB + one F16 output + Q4_K_M); "
                 "free some space or pass --workdir on a bigger disk")
    busy = other_busy_processes()
    if busy:
        print("warning: other processes are using the CPU, timings will be contended:\n  " + "\n  ".join(busy),
              flush=True)

    facts = machine_facts()
    facts["disk_free_gb_at_start"] = round(free / 1e9, 1)
    record = {"benchmark": "convert_8b", "machine": facts, "shape": args.shape, "steps": {},
              "notes": []}
    src = Path(args.src) if args.src else workdir / ("userlm-8b-random" if args.shape == "8b"
                                                     else f"userlm-{args.shape}-random")
    bin_dir = Path(sys.executable).parent
    ours_cli = str(bin_dir / "userlm-local")
    out_ours = workdir / "ours"
    out_ref = workdir / "llama_cpp"
    cold = not args.no_drop_cache

    def before_step(name: str) -> None:
        if cold and not drop_page_cache():
            record["notes"].append("page cache could not be dropped (not root): steps ran with a warm cache")
            print("note: cannot drop the page cache (not root); timings depend on what is cached", flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)

    def measured(name: str, cmd: list, **kw) -> dict:
        before_step(name)
        r = run_measured(cmd, log=log, **kw)
        # ours fsyncs its output before renaming it into place, llama.cpp's converter does not: time the
        # flush of what the step left dirty in the page cache (not part of 'seconds')
        t0 = time.perf_counter()
        os.sync()
        r["sync_after_s"] = round(time.perf_counter() - t0, 2)
        r["busy_processes_after"] = other_busy_processes()
        record["steps"][name] = r
        status = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']} (see {log})"
        print(f"    {r['seconds']:.1f} s (+ {r['sync_after_s']:.1f} s to sync what it left unwritten), "
              f"peak RSS {gib(r['peak_rss_bytes'])} GiB "
              f"(anon {gib(r['peak_anon_bytes_sampled'])}, file {gib(r['peak_file_bytes_sampled'])}) {status}",
              flush=True)
        save_results("convert_8b", record, results_path)
        return r

    try:
        if args.src:
            record["source"] = {"path": str(src), "bytes": sum(p.stat().st_size for p in src.iterdir())}
        else:
            print(f"writing a random bf16 {args.shape} checkpoint ({src_bytes / 1e9:.1f} GB) to {src}", flush=True)
            t0 = time.perf_counter()
            record["source"] = write_checkpoint(src, args.shape, int(args.shard_gb * 1e9), cache=CACHE,
                                                  log=lambda m: print(m, flush=True))
            record["source"]["seconds_to_write"] = round(time.perf_counter() - t0, 1)
            record["source"].pop("config")
            record["source"]["config"] = cfg
            print(f"  {record['source']['n_params'] / 1e9:.2f} B parameters, {record['source']['shards']} shards, "
                  f"{record['source']['seconds_to_write']} s", flush=True)
        save_results("convert_8b", record, results_path)

        # (b) llama.cpp's converter
        if "llama_cpp" not in skip:
            tree = llama_cpp_tree()
            out_ref.mkdir(exist_ok=True)
            ref_file = out_ref / "ref-F16.gguf"
            r = measured("llama_cpp_f16", [sys.executable, tree / "convert_hf_to_gguf.py", src, "--outtype", "f16",
                                           "--outfile", ref_file], env=llama_cpp_env(tree, workdir))
            r["output_bytes"] = ref_file.stat().st_size if ref_file.exists() else None
            shutil.rmtree(out_ref, ignore_errors=True)

        # (a) ours: F16 without validation (the conversion alone, like llama.cpp's)
        ours_f16 = None
        if "ours" not in skip:
            r = measured("ours_f16", [ours_cli, "convert", src, "--to", "gguf", "--quant", "f16", "--out", out_ours,
                                      "--no-validate", "--force"])
            ours_f16 = next(out_ours.glob("*-F16.gguf"), None)
            r["output_bytes"] = ours_f16.stat().st_size if ours_f16 else None
            art = manifest_artifact(out_ours)
            if art:  # the F16 writer alone (it hashes what it writes; the source is hashed alongside)
                r["writer_seconds"] = art.get("seconds")

        # (a) ours: F16 -> Q4_K_M with llama_model_quantize
        if "quantize" not in skip and ours_f16 is not None:
            q4 = out_ours / "quantized-Q4_K_M.gguf"
            code = ("import sys; from userlm_local.convert.quantize import QUANTS, quantize; "
                    "quantize(sys.argv[1], sys.argv[2], QUANTS['q4_k_m'])")
            r = measured("ours_quantize_q4_k_m", [sys.executable, "-c", code, ours_f16, q4])
            r["output_bytes"] = q4.stat().st_size if q4.exists() else None
            if q4.exists():
                q4.unlink()
        shutil.rmtree(out_ours, ignore_errors=True)

        # (a) ours: F16 with the conversion-time validation, minus the torch float32 logits check
        if "validated" not in skip:
            r = measured("ours_f16_validated", [ours_cli, "convert", src, "--to", "gguf", "--quant", "f16",
                                                "--out", out_ours, "--no-logit-check", "--force"])
            art = manifest_artifact(out_ours)
            if art:
                r["writer_seconds"] = art.get("seconds")
                v = art.get("validation")
                r["validation"] = ({k: (x.get("ok") if isinstance(x, dict) else x) for k, x in v.items()}
                                   if isinstance(v, dict) else v)
                r["output_bytes"] = art.get("bytes")
            shutil.rmtree(out_ours, ignore_errors=True)

        # a quantization with our importance matrix (computed layer by layer), end to end
        if args.probe_imatrix:
            n, tokens = args.probe_imatrix
            r = measured("probe_imatrix_q4_k_m", [ours_cli, "convert", src, "--to", "gguf", "--quant", "q4_k_m",
                                                  "--imatrix", "--calibration", "builtin",
                                                  "--calibration-conversations", str(n),
                                                  "--calibration-tokens", str(tokens), "--no-validate",
                                                  "--out", out_ours, "--force"])
            art = manifest_artifact(out_ours)
            if art:
                r["output_bytes"] = art.get("bytes")
                r["quantize_seconds"] = art.get("seconds")
                r["imatrix"] = art.get("imatrix")
            print("    " + "\n    ".join(r["output_tail"][-4:]), flush=True)
            shutil.rmtree(out_ours, ignore_errors=True)
            save_results("convert_8b", record, results_path)

        # how the default (with the torch float32 logits check) behaves when the model does not fit in RAM
        if args.probe_logit_check:
            avail = _mem_available()
            r = measured("probe_default_options", [ours_cli, "convert", src, "--to", "gguf", "--quant", "f16",
                                                   "--out", out_ours, "--force"], limit_as=avail)
            r["limit_as_bytes"] = avail
            r["left_in_out_dir"] = sorted(p.name for p in out_ours.iterdir()) if out_ours.exists() else []
            print("    output dir after: " + (", ".join(r["left_in_out_dir"]) or "empty") + "\n    last lines:\n      "
                  + "\n      ".join(r["output_tail"][-4:]), flush=True)
            shutil.rmtree(out_ours, ignore_errors=True)
            save_results("convert_8b", record, results_path)
    finally:
        shutil.rmtree(out_ref, ignore_errors=True)
        shutil.rmtree(out_ours, ignore_errors=True)
        if not args.src and not args.keep:
            shutil.rmtree(src, ignore_errors=True)
        if not args.workdir and not (args.keep and not args.src):
            shutil.rmtree(workdir, ignore_errors=True)

    report(record)
    save_results("convert_8b", record, results_path)
    print(f"\nresults: {results_path}\nlog: {log}")
    return 0 if all(s["rc"] == 0 for s in record["steps"].values()) else 1


def report(record: dict) -> None:
    steps = record["steps"]
    ref = steps.get("llama_cpp_f16")
    rows = []
    labels = {"llama_cpp_f16": "llama.cpp convert_hf_to_gguf.py --outtype f16",
              "ours_f16": "ours: convert --quant f16 --no-validate",
              "ours_quantize_q4_k_m": "ours: F16 -> Q4_K_M (llama_model_quantize)",
              "ours_f16_validated": "ours: convert --quant f16 --no-logit-check (validated)",
              "probe_imatrix_q4_k_m": "ours: convert --quant q4_k_m --imatrix (F16 temp + imatrix + quantize)"}
    for key, label in labels.items():
        s = steps.get(key)
        if not s:
            continue
        t_ratio = rss_ratio = None
        if ref and ref["rc"] == 0 and key in ("ours_f16", "ours_f16_validated"):
            t_ratio = f"{s['seconds'] / ref['seconds']:.2f}"
            rss_ratio = f"{s['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}"
        sync = s.get("sync_after_s")
        rows.append([label, "ok" if s["rc"] == 0 else f"rc={s['rc']}", f"{s['seconds']:.1f}",
                     "-" if sync is None else f"{sync:.1f}",
                     f"{s['cpu_user_s'] + s['cpu_sys_s']:.0f}", gib(s["peak_rss_bytes"]),
                     gib(s["peak_anon_bytes_sampled"]), gib(s["peak_file_bytes_sampled"]),
                     f"{s.get('read_bytes', s['read_blocks'] * 512) / 1e9:.1f}",
                     f"{s.get('written_bytes', s['written_blocks'] * 512) / 1e9:.1f}",
                     gib(s.get("output_bytes")), t_ratio or "", rss_ratio or ""])
    src = record.get("source", {})
    m = record["machine"]
    title = (f"\nconvert_8b ({record['shape']}, {src.get('n_params', 0) / 1e9:.2f} B params, source "
             f"{gib(src.get('bytes'))} GiB bf16) on {m['cpu_model']}, {m['cores']} cores, {m['date_utc']}")
    print(table(["step", "rc", "wall s", "sync after s", "cpu s", "peak RSS GiB", "anon GiB", "file GiB", "disk read GB",
                 "disk written GB", "out GiB", "time ours/llama.cpp", "RSS ours/llama.cpp"], rows, title))
    ours = steps.get("ours_f16")
    if ref and ours and ref["rc"] == 0 and ours["rc"] == 0:
        rt, rr = ours["seconds"] / ref["seconds"], ours["peak_rss_bytes"] / ref["peak_rss_bytes"]
        met = rr <= 0.5 and rt <= 1.0
        record["target"] = {"rule": "ours peak RSS <= 0.5 x llama.cpp's and time <= 1.0 x (F16, no validation)",
                            "time_ratio": round(rt, 3), "rss_ratio": round(rr, 3), "met": met}
        print(f"\ntarget (ours F16 vs llama.cpp F16): RSS ratio {rr:.2f} (<= 0.50), time ratio {rt:.2f} (<= 1.00): "
              f"{'MET' if met else 'NOT MET'}")
    for key in ("ours_f16", "ours_f16_validated"):
        s = steps.get(key)
        if s and s.get("writer_seconds") is not None:
            print(f"{key}: the F16 writer took {s['writer_seconds']:.1f} s of {s['seconds']:.1f} s (the rest: "
                  "start-up, reading the source's headers, waiting for its sha256, manifest" +
                  (", validation)" if key.endswith("validated") else ")"))
    im = steps.get("probe_imatrix_q4_k_m")
    if im and isinstance(im.get("imatrix"), dict):
        i = im["imatrix"]
        print(f"probe_imatrix_q4_k_m: importance matrix on {i.get('conversations')} conversations, "
              f"{i.get('tokens')} tokens, {i.get('seconds')} s; quantizing {im.get('quantize_seconds')} s")
    probe = steps.get("probe_default_options")
    if probe:
        print(f"\ndefault options (torch float32 logits check on), address space limited to "
              f"{gib(probe['limit_as_bytes'])} GiB (the available memory): rc {probe['rc']} after "
              f"{probe['seconds']:.0f} s, peak RSS {gib(probe['peak_rss_bytes'])} GiB; left in --out: "
              f"{', '.join(probe['left_in_out_dir']) or 'nothing'}; last line: "
              f"{(probe['output_tail'] or [''])[-1][:300]}")
    for n in dict.fromkeys(record["notes"]):
        print(f"note: {n}")


if __name__ == "__main__":
    sys.exit(main())
