"""The recorded preservation run: the default UserLM (SmolLM2-135M + the bundled adapter, float32
on torch) as REF against its GGUF quantizations, with and without an importance matrix.

    python bench/preservation.py --workdir /tmp/pres           # convert, then bench (~1 h on 2 cores)
    python bench/preservation.py --workdir /tmp/pres --skip-convert   # bench existing conversions

The ONNX rows (issue 11): ``--sets onnx,plain --quants INT8,INT4,INT4_MIXED,Q8_0,Q4_K_M --out
bench/results/preservation-onnx`` benches the ONNX int8/int4/int4_mixed directories (convert --to onnx) next to
the GGUF Q8_0/Q4_K_M of the same REF, in one run.

Candidates: f16, q8_0, q6_k, q5_k_m, q4_k_m without an imatrix; q6_k, q5_k_m, q4_k_m, iq4_xs with
the project's user-turn imatrix (training-split conversations in the UserLM template); q4_k_m,
iq4_xs with an imatrix from generic text (Python's library documentation, no template).  The
bench's outputs go to bench/results/preservation/; ``imatrix_comparison`` (same conversations,
paired by conversation) is added to its bench.json and printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

SETS = {  # directory: (quant types, convert options)
    "plain": ("f16,q8_0,q6_k,q5_k_m,q4_k_m", []),
    "user-imatrix": ("q6_k,q5_k_m,q4_k_m,iq4_xs", ["--imatrix", "--calibration", "train"]),
    "generic-imatrix": ("q4_k_m,iq4_xs", ["--imatrix", "--calibration", "generic"]),
    "onnx": ("int8,int4,int4_mixed", ["--to", "onnx"]),
}


def cli(*args: str) -> int:
    cmd = [sys.executable, "-m", "userlm_local.cli", *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def prepare(work: Path, sets: list[str], quants: set[str] | None = None) -> tuple[Path, list[Path]]:
    from userlm_local.defaults.model import adapter_meta, write_hf

    ref = work / "hf-f32"
    if not (ref / "config.json").is_file():
        write_hf(ref, adapter_meta())
    cands = []
    for name in sets:
        types, opts = SETS[name]
        out = work / name
        if not (out / "manifest.json").is_file():
            rc = cli("convert", str(ref), "--quant", types, "--out", str(out), "--no-logit-check", "--quiet",
                     "--name", "userlm-135m", *opts)
            if rc != 0:
                raise SystemExit(f"conversion {name} failed ({rc})")
        manifest = json.loads((out / "manifest.json").read_text())
        cands += [out / a["file"] for a in manifest["artifacts"] if quants is None or a["quant"] in quants]
    return ref, cands


def paired_kld(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean KLD of b minus a (per position, pooled), with a bootstrap over conversations."""
    pa, pb = a["kld_per_conversation"], b["kld_per_conversation"]
    sa, sb, n = (np.array(pa["kld_sum"]), np.array(pb["kld_sum"]), np.array(pa["positions"], dtype=float))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, len(n), len(n))
        diffs.append((sb[i].sum() - sa[i].sum()) / n[i].sum())
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"a": a["label"], "b": b["label"], "kld_a": sa.sum() / n.sum(), "kld_b": sb.sum() / n.sum(),
            "diff": (sb.sum() - sa.sum()) / n.sum(), "ci95": [float(lo), float(hi)],
            "relative": float((sb.sum() - sa.sum()) / sa.sum())}


def imatrix_comparison(report: dict) -> list[dict]:
    by = {}
    for c in report["candidates"]:
        quant = c["model"].get("quant")
        im = (c["model"].get("manifest") or {}).get("imatrix")
        origin = "none" if not im else ("generic" if "generic" in str(im.get("calibration")) else "user-turn")
        by[(quant, origin)] = c
    out = []
    for quant in ("Q4_K_M", "IQ4_XS"):
        pairs = [("none", "user-turn"), ("none", "generic"), ("generic", "user-turn")]
        for x, y in pairs:
            if (quant, x) in by and (quant, y) in by:
                out.append({"quant": quant, "from": x, "to": y, **paired_kld(by[(quant, x)], by[(quant, y)])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "preservation")
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--sets", default="plain,user-imatrix,generic-imatrix",
                    help=f"candidate sets (of {', '.join(SETS)}; default: the GGUF ones)")
    ap.add_argument("--quants", default=None, help="only these types of those sets, e.g. INT8,INT4,Q8_0,Q4_K_M")
    args = ap.parse_args()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if any(s not in SETS for s in sets):
        ap.error(f"--sets: choose from {', '.join(SETS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ref, cands = prepare(args.workdir, sets, {q.strip().upper() for q in args.quants.split(",")} if args.quants else None)
    rc = cli("bench", str(ref), *map(str, cands), "--limit", str(args.limit), "--trials", str(args.trials),
             "--out", str(args.out), "--quiet")
    report = json.loads((args.out / "bench.json").read_text())
    report["imatrix_comparison"] = imatrix_comparison(report)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    for row in report["imatrix_comparison"]:
        print(f"{row['quant']}: imatrix {row['from']} -> {row['to']}: mean KLD {row['kld_a']:.4g} -> "
              f"{row['kld_b']:.4g} ({100 * row['relative']:+.1f}%, 95% CI of the difference "
              f"[{row['ci95'][0]:.3g}, {row['ci95'][1]:.3g}])")
    sys.exit(rc)


if __name__ == "__main__":
    main()
