"""Naturalness (proxy): a small, local, deterministic detector of assistant-written text.

The paper scored naturalness with Pangram, a closed detector, on first turns of 50 to 200 tokens
(human first turns 90.15, prompted assistants 0 to 3).  This is not that: a logistic regression on
hashed word unigrams and bigrams, character trigrams and a few style marks, trained on ShareGPT's
training split (user turns, written by people, against assistant turns, written by a model) and
calibrated on the validation split (an affine map of its logit) so that human first turns score
about 90 and assistant turns about 2 on the paper's scale.  Always reported as "naturalness
(proxy)".  The weights ship in ``bundled/naturalness-v1/`` (``bench/train_naturalness.py`` makes them)."""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np

from ..util.errors import UserError

BUNDLE = Path(__file__).resolve().parent.parent / "bundled" / "naturalness-v1"
VERSION = "naturalness-v1"
BITS = 16  # 65,536 hashed features
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _h(s: str) -> int:
    return zlib.crc32(s.encode("utf-8")) & ((1 << BITS) - 1)


def features(text: str) -> np.ndarray:
    """The hashed feature ids of ``text`` (each id once: presence, not counts)."""
    low = text.lower()
    toks = _WORD.findall(low)[:400]
    feats = {f"w:{t}" for t in toks} | {f"b:{a} {b}" for a, b in zip(toks, toks[1:])}
    s = " ".join(low.split())[:2000]
    feats |= {f"c:{s[i:i + 3]}" for i in range(max(len(s) - 2, 0))}
    n = len(toks)
    feats |= {f"len:{min(int(math.log2(n + 1)), 10)}", f"first_upper:{text[:1].isupper()}",
              f"ends:{text.rstrip()[-1:] if text.strip() else ''}", f"newlines:{min(text.count(chr(10)), 5)}",
              f"lists:{bool(re.search(r'(?m)^[ ]*([-*]|[0-9]+[.)]) ', text))}", f"lower_i:{' i ' in f' {low} ' and ' I ' not in text}"}
    return np.fromiter(sorted({_h(f) for f in feats}), dtype=np.int64)


def logits(texts: list[str], w: np.ndarray, b: float) -> np.ndarray:
    return np.array([float(w[features(t)].sum()) + b for t in texts], dtype=np.float64)


def train(human: list[str], model: list[str], *, epochs: int = 4, lr: float = 0.5, l2: float = 1e-6,
          seed: int = 0) -> tuple[np.ndarray, float]:
    """Logistic regression (label 1 = human) by Adagrad over shuffled single examples."""
    X = [features(t) for t in human] + [features(t) for t in model]
    y = np.concatenate([np.ones(len(human)), np.zeros(len(model))])
    w, b = np.zeros(1 << BITS), 0.0
    g2, gb2 = np.full(1 << BITS, 1e-8), 1e-8
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(len(X)):
            idx = X[i]
            z = w[idx].sum() + b
            grad = 1.0 / (1.0 + math.exp(-z)) - y[i] if z > -30 else -y[i]
            g = grad + l2 * w[idx]
            g2[idx] += g * g
            w[idx] -= lr * g / np.sqrt(g2[idx])
            gb2 += grad * grad
            b -= lr * grad / math.sqrt(gb2)
    return w, b


def calibrate(z_human: np.ndarray, z_model: np.ndarray, *, human: float = 0.90, model: float = 0.02) -> tuple[float, float]:
    """(a, c) so that the mean of sigmoid(a z + c) is ``human`` on ``z_human`` and as near ``model``
    as a monotone map allows on ``z_model`` (a scale found by search, c by bisection)."""
    def mean(z, a, c):
        return float(np.mean(1.0 / (1.0 + np.exp(-np.clip(a * z + c, -50, 50)))))

    def shift(a):
        lo, hi = -50.0, 50.0
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean(z_human, a, mid) < human else (lo, mid)
        return (lo + hi) / 2

    best = None
    for a in np.exp(np.linspace(np.log(0.05), np.log(20), 200)):
        c = shift(a)
        err = abs(mean(z_model, a, c) - model)
        if best is None or err < best[0]:
            best = (err, float(a), float(c))
    return best[1], best[2]


class Detector:
    """The shipped detector: P(human-written) of a text, on the paper's calibrated scale."""

    def __init__(self, bundle: Path = BUNDLE):
        try:
            arrays = np.load(bundle / "weights.npz")
            self.meta = json.loads((bundle / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{bundle}: the naturalness detector is missing or damaged ({exc})") from None
        self.w = arrays["w"].astype(np.float64)
        self.b, self.a, self.c = float(self.meta["bias"]), float(self.meta["scale"]), float(self.meta["shift"])

    def p_human(self, texts: list[str]) -> np.ndarray:
        z = logits(texts, self.w, self.b)
        return 1.0 / (1.0 + np.exp(-np.clip(self.a * z + self.c, -50, 50)))


def in_length(n_tokens: int, lo: int = 50, hi: int = 200) -> bool:
    """The paper's filter: first turns of 50 to 200 tokens."""
    return lo <= n_tokens <= hi
