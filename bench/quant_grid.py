"""Why a quantized type with more bits can be worse: per tensor class, the relative RMS error of each
quantized GGUF's weights against the F16 they were made from, and how many distinct values a
32-weight block of the F16 holds (16 at most: the weights lie on a 4-bit grid, e.g. a dequantized
Q4_1 base).  Issue 24 asked why the default UserLM's Q5_K_M has a higher KLD than its Q4_K_M.

    python bench/quant_grid.py F16.gguf Q4_K_M.gguf Q5_K_M.gguf [...] [--json out.json]

Reads with gguf-py (its reader and dequantizers), so nothing of ours is measured against itself.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


def weights(path: Path) -> dict:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) < 2:
            continue  # norms stay F32 in every file
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        out[t.name] = (t.tensor_type.name, w.reshape(-1, w.shape[-1]))
    return out


def kind(name: str) -> str:
    return re.sub(r"^blk\.\d+\.", "", name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ref", type=Path, help="the F16/F32 GGUF the others were quantized from")
    ap.add_argument("quants", type=Path, nargs="+")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ref = weights(args.ref)
    grid = defaultdict(lambda: [0, 0])  # tensor class: [blocks with <= 16 distinct values, blocks]
    for name, (_, w) in ref.items():
        blocks = w.reshape(-1, 32)
        distinct = (np.diff(np.sort(blocks, axis=1), axis=1) != 0).sum(axis=1) + 1
        grid[kind(name)][0] += int((distinct <= 16).sum())
        grid[kind(name)][1] += len(blocks)
    errors: dict = {}
    for q in args.quants:
        agg = defaultdict(lambda: [0.0, 0.0, set()])
        for name, (ty, wq) in weights(q).items():
            w = ref[name][1]
            a = agg[kind(name)]
            a[0] += float(((wq.reshape(w.shape) - w) ** 2).sum())
            a[1] += float((w ** 2).sum())
            a[2].add(ty)
        errors[q.name] = {k: {"rel_rmse": (v[0] / v[1]) ** 0.5, "types": sorted(v[2])} for k, v in agg.items()}
    names = [q.name for q in args.quants]
    rows = []
    for k in sorted(grid):
        rows.append([k, f"{100 * grid[k][0] / grid[k][1]:.1f}%"]
                    + [f"{errors[n][k]['rel_rmse']:.4f} ({'/'.join(errors[n][k]['types'])})" if k in errors[n] else "-"
                       for n in names])
    print("relative RMS error of each file's weights vs the F16 (types used in that class):")
    print(table(["tensor class", "F16 blocks on a 4-bit grid"] + names, rows))
    save_results("quant_grid", {
        "machine": machine_facts(), "ref": args.ref.name,
        "grid": {k: {"blocks_16_or_fewer_values": g[0], "blocks": g[1]} for k, g in grid.items()},
        "errors": errors}, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
