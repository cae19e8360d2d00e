"""Samplers and logits processors as plain callables, the sampling presets, and ``Noise``.

A ``LogitsProcessor`` is ``(turn_ids, logits) -> logits`` where ``turn_ids`` are the ids generated
so far in this turn.  A ``Sampler`` is ``(logits, key) -> id``: ``key`` is a 64-bit int, the
draw's place in its conversation (``Noise.key``), and the draw is a function of the logits and
the key alone (coupled sampling).  The same key on two nearly equal distributions (a model and its
quantization) almost always gives the same token: P(differ) <= 2 TV / (1 + TV).

The draw is Gumbel-max over the nucleus: after temperature, min_p, top_k and top_p (the nucleus),
the id i with the largest ``(x_i - max) / T - log(-log(u_i))``, where ``u_i`` in (0, 1) hashes
(key, i) (splitmix64: ``token_uniforms``).  That is an exact draw from the renormalised nucleus.
Three implementations compute the same scores in the same order of double operations, so they
return the same id for the same key (their logs may differ in the last bit: two scores would have
to tie to ~1e-15 for that to matter): the C kernel ``kernels/nucleus.c`` (built at install as
``userlm_local._nucleus``; O(vocab), no sort), the numpy reference below (sorts a wide nucleus),
and ``torch_sample`` for logits on a device.  ``backend()`` says which host one is in use, and
``USERLM_SAMPLER=numpy`` forces the reference.

A sampler also takes a ``numpy.random.Generator`` in place of a key (one 64-bit key drawn from it
per token: uncoupled, for callers that only need a seeded stream).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..util.errors import UserError

LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]
Key = int  # a draw's 64-bit key (``Noise.key``)
Sampler = Callable[[np.ndarray, "Key | np.random.Generator"], int]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off

    def __post_init__(self):
        if not self.temperature >= 0 or self.temperature == float("inf"):  # nan fails every comparison
            raise UserError(f"temperature must be a number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise UserError(f"min_p must be in [0, 1), got {self.min_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise UserError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")


PRESETS = {
    # the model card snippet and the paper's simulations
    "paper": SamplingParams(temperature=1.0, top_p=0.8),
    # UserLM-8b's generation_config.json
    "generation-config": SamplingParams(temperature=0.6, top_p=0.9),
    "greedy": SamplingParams(temperature=0.0),
}


def preset(name: str) -> SamplingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown sampling preset {name!r} (choose from {', '.join(PRESETS)})") from None


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """An RNG stream derived from ``seed`` and ``keys`` (e.g. intent id, trial)."""
    digest = hashlib.sha256(repr((int(seed), *map(str, keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


MASK64 = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix64(z: int) -> int:
    """splitmix64's output function on a 64-bit int."""
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def _key_of(seed: int, keys: tuple) -> int:
    digest = hashlib.blake2b(repr((int(seed), *map(str, keys))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Noise:
    """Where a conversation's randomness comes from, keyed by place rather than by order: a draw's
    key depends on (seed, conversation keys, turn, attempt, ..., position) and on nothing drawn
    before it, so a conversation is reproducible whatever runs beside it, and two models given the
    same noise draw their tokens from the same Gumbel noise (coupled).

    ``Noise.for_(seed, intent_id, trial)`` for a conversation; ``.child(turn, attempt)`` for a part
    of it (one hash each); ``.key(position)`` for one draw (splitmix64: cheap per token)."""

    state: int

    @classmethod
    def for_(cls, seed: int, *keys: object) -> "Noise":
        return cls(_key_of(seed, keys))

    def child(self, *keys: object) -> "Noise":
        return Noise(_key_of(self.state, keys))

    def key(self, position: int) -> Key:
        return mix64((self.state + (int(position) + 1) * _GOLDEN) & MASK64)


def token_uniforms(key: Key, ids: np.ndarray) -> np.ndarray:
    """u_i in (0, 1) for the draw ``key`` and token ``ids``: splitmix64's (i + 1)-th output from
    the state ``key``, its top 52 bits plus a half (exact in a double).  The kernel's bits."""
    with np.errstate(over="ignore"):
        z = (np.asarray(ids).astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN) + np.uint64(key & MASK64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0 ** -52


def gumbel_argmax(logits32: np.ndarray, ids: np.ndarray, inv_temp: float, key: Key) -> int:
    """The nucleus ``ids``' Gumbel-max: the id with the largest (x_i - max) / T - log(-log u_i),
    ties to the smaller id, in the kernel's order of double operations (so the same id)."""
    ids = np.sort(ids)
    m = np.float64(np.max(logits32[ids]))  # the row's max: the heaviest id is always in the nucleus
    score = (logits32[ids].astype(np.float64) - m) * inv_temp - np.log(-np.log(token_uniforms(key, ids)))
    return int(ids[int(np.argmax(score))])


def _as_key(key) -> Key:
    """A draw's key; a Generator gives one (an uncoupled stream)."""
    if isinstance(key, np.random.Generator):
        return int(key.integers(0, 1 << 64, dtype=np.uint64))
    return int(key) & MASK64


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def _nucleus(probs: np.ndarray, top_p: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (most probable first) and their probabilities after top-k / top-p."""
    n = probs.size
    k = n if top_k <= 0 else min(top_k, n)
    # Sort only a partition when it provably holds the whole nucleus; else sort everything.
    m = min(k, 256)
    if m < n:
        part = np.argpartition(-probs, m - 1)[:m]
        # argpartition takes any of the ids tied at its edge: take them by id, as a full sort would
        edge = probs[part].min()
        above, tied = np.flatnonzero(probs > edge), np.flatnonzero(probs == edge)
        part = np.concatenate([above, tied[:m - above.size]])
        order = part[np.argsort(-probs[part], kind="stable")]
        if m < k and probs[order].sum() < top_p:
            order = np.argsort(-probs, kind="stable")[:k]
    else:
        order = np.argsort(-probs, kind="stable")[:k]
    p = probs[order]
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        order, p = order[:cut], p[:cut]
    return order, p


_KERNEL: list = []  # [(nucleus_gumbel, nucleus_mask, nucleus_sample) or None], loaded once
_SCRATCH = threading.local()


def _kernel():
    if not _KERNEL:
        fn = None
        if os.environ.get("USERLM_SAMPLER", "").lower() != "numpy":
            from importlib.util import find_spec

            try:
                spec = find_spec("userlm_local._nucleus")
                if spec is not None and spec.origin:
                    lib = ctypes.CDLL(spec.origin)
                    row = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_int64,
                           ctypes.c_float]
                    gumbel, mask, icdf = lib.nucleus_gumbel, lib.nucleus_mask, lib.nucleus_sample
                    gumbel.restype, mask.restype, icdf.restype = ctypes.c_int32, ctypes.c_int64, ctypes.c_int32
                    gumbel.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_float,
                                       ctypes.c_int64, ctypes.c_float, ctypes.c_uint64, ctypes.c_void_p]
                    mask.argtypes = [*row, ctypes.c_void_p, ctypes.c_void_p]
                    icdf.argtypes = [*row, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p]
                    fn = (gumbel, mask, icdf)
            except (OSError, AttributeError, ImportError):
                fn = None
        _KERNEL.append(fn)
    return _KERNEL[0]


def backend() -> str:
    """Which sampler ``make_sampler`` builds: ``c`` (the kernel) or ``numpy`` (the reference)."""
    return "c" if _kernel() is not None else "numpy"


def kernel_nucleus(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The ids the C kernel can draw from for ``logits`` (a boolean mask): the nucleus it
    computes, for checking it against the reference."""
    if _kernel() is None:
        raise UserError("the C sampler is not built in this installation")
    x = np.ascontiguousarray(logits, dtype=np.float32)
    w, out = np.empty(x.size, np.float32), np.zeros(x.size, np.uint8)
    size = _kernel()[1](x.ctypes.data, x.size, 1.0 / params.temperature, params.top_p, params.top_k,
                        params.min_p, w.ctypes.data, out.ctypes.data)
    if size < 0:
        raise ValueError("no token can be sampled: every logit is -inf")
    return out.astype(bool)


def _scratch(n: int) -> np.ndarray:
    w = getattr(_SCRATCH, "w", None)
    if w is None or w.size < n:
        w = _SCRATCH.w = np.empty(n, np.float32)
    return w


def make_sampler(params: SamplingParams, *, impl: str | None = None) -> Sampler:
    """A sampler for ``params``: ``sample(logits, key)``.  ``impl`` = ``c`` or ``numpy`` picks one
    for numpy logits (default: the kernel when it is built; both give the same id for the same
    key).  Logits that are a torch tensor (a model on a GPU) are sampled where they are, by
    ``torch_sample``: only the chosen id comes back to the host."""
    host = _host_sampler(params, impl)

    def sample(logits, key) -> int:
        if isinstance(logits, np.ndarray):
            return host(logits, _as_key(key))
        return torch_sample(logits, params, key)

    return sample


def _torch_uniforms(torch, key: Key, ids):
    """``token_uniforms`` on an int64 tensor of ids, on its device (int64 arithmetic wraps like
    uint64; right shifts are masked to be logical)."""
    def signed(c: int) -> int:
        return c - (1 << 64) if c >= 1 << 63 else c

    z = (ids + 1) * signed(_GOLDEN) + signed(key)
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * signed(_M1)
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * signed(_M2)
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return (((z >> 12) & ((1 << 52) - 1)).to(torch.float64) + 0.5) * 2.0 ** -52


def torch_sample(logits, params: SamplingParams, key) -> int:
    """The reference's draw on a torch tensor, on its device: softmax at the temperature (in float64,
    as the reference), min_p, the top_k / top_p nucleus (sorted, ties by id), then the same
    Gumbel-max with the same hash as the host: the same id for the same key."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits).item())
    key = _as_key(key)
    x = logits.float()  # float32 logits, as the host's
    probs = torch.softmax((x / params.temperature).double(), dim=-1)  # the reference's float64 nucleus
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, torch.zeros_like(probs))
    p, ids = torch.sort(probs, descending=True, stable=True)
    if params.top_k > 0:
        p = p[:params.top_k]
        ids = ids[:params.top_k]
    if params.top_p < 1.0:
        p = torch.where(torch.cumsum(p, 0) - p < params.top_p, p, torch.zeros_like(p))
    ids = torch.sort(ids[p > 0]).values
    if ids.numel() == 0:
        raise ValueError("no token can be sampled: every logit is -inf")
    kept = x[ids].to(torch.float64)
    score = ((kept - kept.max()) * (1.0 / params.temperature)
             - torch.log(-torch.log(_torch_uniforms(torch, key, ids))))
    return int(ids[torch.argmax(score)].item())


def _host_sampler(params: SamplingParams, impl: str | None) -> Callable[[np.ndarray, Key], int]:
    if params.temperature == 0:
        return lambda logits, key: int(np.argmax(logits))
    kernel = _kernel()[0] if impl in (None, "c") and _kernel() is not None else None
    if impl == "c" and kernel is None:
        raise UserError("the C sampler is not built in this installation (reinstall with a C compiler)")
    if kernel is not None:
        inv_t, top_p, top_k, min_p = 1.0 / params.temperature, params.top_p, params.top_k, params.min_p

        def sample_c(logits: np.ndarray, key: Key) -> int:
            x = np.ascontiguousarray(logits, dtype=np.float32)
            w = _scratch(x.size)
            token = kernel(x.ctypes.data, x.size, inv_t, top_p, top_k, min_p, key, w.ctypes.data)
            if token < 0:
                raise ValueError("no token can be sampled: every logit is -inf")
            return int(token)

        return sample_c
    return _numpy_sampler(params)


def _numpy_sampler(params: SamplingParams) -> Callable[[np.ndarray, Key], int]:
    inv_t = 1.0 / params.temperature

    def sample(logits: np.ndarray, key: Key) -> int:
        x = np.asarray(logits, dtype=np.float32)  # the kernel's float32 logits: the same scores
        if not x.max() > -np.inf:
            raise ValueError("no token can be sampled: every logit is -inf")
        probs = softmax(logits / params.temperature)
        if params.min_p > 0:
            probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
        ids, p = _nucleus(probs, params.top_p, params.top_k)
        return gumbel_argmax(x, ids[p > 0], inv_t, key)

    return sample


def icdf_sampler(params: SamplingParams) -> Callable[[np.ndarray, np.random.Generator], int]:
    """The previous C draw (the inverse CDF at one ``rng.random()`` per token, uncoupled), kept for
    bench/sampler_speed.py's old-vs-new comparison only."""
    if _kernel() is None:
        raise UserError("the C sampler is not built in this installation")
    icdf = _kernel()[2]
    inv_t, top_p, top_k, min_p = 1.0 / params.temperature, params.top_p, params.top_k, params.min_p

    def sample(logits: np.ndarray, rng: np.random.Generator) -> int:
        x = np.ascontiguousarray(logits, dtype=np.float32)
        w = _scratch(x.size)
        return int(icdf(x.ctypes.data, x.size, inv_t, top_p, top_k, min_p, rng.random(), w.ctypes.data, None))

    return sample


def ban(ids: set[int] | frozenset[int], when: Callable[[list[int]], bool] | None = None) -> LogitsProcessor:
    """A processor that sets the logits of ``ids`` to -inf (only where ``when(turn_ids)`` holds)."""
    idx = np.fromiter(sorted(ids), dtype=np.int64)

    def process(turn_ids: list[int], logits: np.ndarray) -> np.ndarray:
        if idx.size == 0 or (when is not None and not when(turn_ids)):
            return logits
        if not isinstance(logits, np.ndarray):  # a torch tensor on its device
            import torch

            out = logits.clone()
            out[torch.as_tensor(idx[idx < out.numel()], device=out.device)] = float("-inf")
            return out
        out = logits.copy()
        out[idx[idx < out.size]] = -np.inf
        return out

    return process


def repetition_penalty(penalty: float, context: list[int] | tuple[int, ...],
                       exempt: frozenset[int] = frozenset()) -> LogitsProcessor:
    """The CTRL / transformers repetition penalty: every id already in ``context`` or in the turn
    so far has its logit divided by ``penalty`` (multiplied where negative), so a reply is
    discouraged from copying what the conversation already holds (an earlier reply above all).
    ``exempt`` ids (the stop tokens) are never penalised: a reply must stay free to end."""
    if not (math.isfinite(penalty) and penalty >= 1.0):
        raise UserError(f"repeat penalty must be a number >= 1 (1: off), got {penalty}")
    seen, done = np.zeros(0, dtype=bool), 0
    base = np.fromiter((t for t in set(context) if t not in exempt), dtype=np.int64)

    def process(turn_ids: list[int], logits: np.ndarray) -> np.ndarray:
        nonlocal seen, done
        if penalty == 1.0:
            return logits
        if not isinstance(logits, np.ndarray):  # a torch tensor on its device
            logits = logits.float().cpu().numpy()
        if seen.size != logits.size:
            seen = np.zeros(logits.size, dtype=bool)
            seen[base[base < logits.size]] = True
        for t in turn_ids[done:]:
            if t not in exempt and t < seen.size:
                seen[t] = True
        done = len(turn_ids)
        out = logits.astype(np.float32, copy=True)
        hit = out[seen]
        out[seen] = np.where(hit > 0, hit / penalty, hit * penalty)
        return out

    return process
