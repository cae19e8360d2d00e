"""Sampler cost per token, side by side in one run: our C kernel's coupled draw (Gumbel-max over the
nucleus, keyed noise: the sampler every campaign uses) against its previous draw (the inverse CDF at
one uniform per token, kept in the kernel as ``nucleus_sample`` for this comparison), llama.cpp's
sampler chain and the numpy reference, at 32k, 128k and 256k vocabularies (temperature 1, top-p 0.8).

    python bench/sampler_speed.py            # writes bench/results/sampler_speed.json

"flat" logits are N(0, 0.5): the top-0.8 nucleus is most of the vocabulary (the worst case for a
sorting sampler, and for the Gumbel draw, which hashes every nucleus id); "peaked" are N(0, 4): a few
hundred tokens; "zipf" are a language model's usual shape, log p = -1.5 log(rank) over a shuffled
vocabulary: a nucleus of a dozen tokens.  Each sampler gets the same rows, in interleaved rounds, so
all see the same machine load.  llama.cpp's chain is temp -> top_p -> dist(seed) through
llama-cpp-python's ctypes API, with the token-data array filled from numpy each call (what using it
per conversation would cost).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts, save_results, table  # noqa: E402


def llama_chain(n_vocab: int):
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(1.0))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(0.8, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(1234))
    arr = (L.llama_token_data * n_vocab)()
    view = np.ctypeslib.as_array(arr)
    ids = np.arange(n_vocab, dtype=np.int32)

    def sample(logits: np.ndarray, position) -> int:
        view["id"] = ids
        view["logit"] = logits
        view["p"] = 0
        cur = L.llama_token_data_array(data=arr, size=n_vocab, selected=-1, sorted=False)
        L.llama_sampler_apply(chain, ctypes.byref(cur))
        return int(view["id"][cur.selected])

    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=20, help="rows per sampler per round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from userlm_local.runtime.sampling import Noise, SamplingParams, backend, icdf_sampler, make_sampler, rng_for

    if backend() != "c":
        raise SystemExit("the C sampler is not built (pip install -e . with a C compiler)")
    facts = machine_facts()
    params = SamplingParams(1.0, 0.8)
    rng = np.random.default_rng(0)
    results = []
    # every sampler is (row, position) -> id, each paying for its own randomness: the coupled draws
    # take the position's key, the old one a uniform from a seeded stream
    noise, stream = Noise.for_(0, "sampler_speed"), rng_for(0, "sampler_speed")
    keyed = lambda sample: lambda row, k: sample(row, noise.key(k))  # noqa: E731
    for vocab in (32000, 128257, 256000):
        old = icdf_sampler(params)
        samplers = {"c gumbel (new)": keyed(make_sampler(params, impl="c")),
                    "c inverse cdf (old)": lambda row, k: old(row, stream),
                    "numpy reference": keyed(make_sampler(params, impl="numpy"))}
        try:
            samplers["llama.cpp chain"] = llama_chain(vocab)
        except ImportError:
            pass
        for kind in ("flat", "peaked", "zipf"):
            if kind == "zipf":
                ranks = np.stack([rng.permutation(vocab) + 1.0 for _ in range(args.rows)])
                rows = (-1.5 * np.log(ranks)).astype(np.float32)
            else:
                rows = (rng.normal(size=(args.rows, vocab)) * (0.5 if kind == "flat" else 4.0)).astype(np.float32)
            secs = {name: [] for name in samplers}
            for _ in range(args.rounds):
                for name, sample in samplers.items():
                    t0 = time.perf_counter()
                    for k, row in enumerate(rows):
                        sample(row, k)
                    secs[name].append((time.perf_counter() - t0) / len(rows))
            p = np.exp(rows[0].astype(np.float64) - rows[0].max())
            p = np.sort(p / p.sum())[::-1]
            nucleus = int(np.searchsorted(np.cumsum(p), 0.8)) + 1
            row = {"vocab": vocab, "logits": kind, "nucleus": nucleus,
                   **{f"{name} ms": round(1000 * float(np.median(v)), 4) for name, v in secs.items()}}
            new = row["c gumbel (new) ms"]
            row["new / old"] = round(new / row["c inverse cdf (old) ms"], 2)
            row["numpy / new"] = round(row["numpy reference ms"] / new, 1)
            if "llama.cpp chain ms" in row:
                row["llama.cpp / new"] = round(row["llama.cpp chain ms"] / new, 1)
            results.append(row)
            print(row, flush=True)
    headers = list(results[0])
    print(table(headers, [[r.get(h) for h in headers] for r in results]))
    save_results("sampler_speed", {"machine": facts, "args": vars(args), "results": results},
                 Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
