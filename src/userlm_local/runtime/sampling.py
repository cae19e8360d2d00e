"""Samplers and logits processors as plain callables, and the sampling presets.

A ``LogitsProcessor`` is ``(turn_ids, logits) -> logits`` where ``turn_ids`` are
the ids generated so far in this turn.  A ``Sampler`` is ``(logits, rng) -> id``.
Every conversation owns its own ``numpy.random.Generator`` (see ``rng_for``), so
its draws do not depend on what else runs beside it.

Two implementations draw from the same distribution: the C kernel ``kernels/nucleus.c``
(built at install as ``userlm_local._nucleus``; expected O(vocab), no sort) and the numpy
reference below (sorts a wide nucleus).  Both take one ``rng.random()`` per token, but they
walk the nucleus in different orders, so the same seed gives different (equally distributed)
tokens: ``backend()`` says which one is in use, and ``USERLM_SAMPLER=numpy`` forces the reference.
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
Sampler = Callable[[np.ndarray, np.random.Generator], int]


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


_KERNEL: list = []  # [(nucleus_sample, nucleus_mask) or None], loaded once
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
                    sample, mask = lib.nucleus_sample, lib.nucleus_mask
                    sample.restype, mask.restype = ctypes.c_int32, ctypes.c_int64
                    sample.argtypes = [*row, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p]
                    mask.argtypes = [*row, ctypes.c_void_p, ctypes.c_void_p]
                    fn = (sample, mask)
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


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    w = getattr(_SCRATCH, "w", None)
    if w is None or w.size < n:
        _SCRATCH.w, _SCRATCH.ids = np.empty(n, np.float32), np.empty(n, np.int32)
    return _SCRATCH.w, _SCRATCH.ids


def make_sampler(params: SamplingParams, *, impl: str | None = None) -> Sampler:
    """A sampler for ``params``; ``impl`` = ``c`` or ``numpy`` picks one for numpy logits (default:
    the kernel when it is built).  Logits that are a torch tensor (a model on a GPU) are sampled
    where they are, by ``torch_sample``: only the chosen id comes back to the host."""
    host = _host_sampler(params, impl)

    def sample(logits, rng: np.random.Generator) -> int:
        if isinstance(logits, np.ndarray):
            return host(logits, rng)
        return torch_sample(logits, params, rng)

    return sample


def torch_sample(logits, params: SamplingParams, rng: np.random.Generator) -> int:
    """The reference's nucleus draw on a torch tensor, on its device: softmax at the temperature,
    min_p, the top_k / top_p nucleus (sorted, ties by id), and the inverse CDF at one uniform
    from the conversation's own ``rng`` (the same one-draw-per-token contract as on the host)."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, torch.zeros_like(probs))
    p, ids = torch.sort(probs, descending=True, stable=True)
    if params.top_k > 0:
        p = p[:params.top_k]
        ids = ids[:params.top_k]
    if params.top_p < 1.0:
        p = torch.where(torch.cumsum(p, 0) - p < params.top_p, p, torch.zeros_like(p))
    cdf = torch.cumsum(p, 0)
    r = torch.tensor(rng.random(), dtype=cdf.dtype, device=cdf.device) * cdf[-1]
    i = torch.clamp(torch.searchsorted(cdf, r, right=True), max=cdf.numel() - 1)
    while p[i] == 0 and i > 0:  # rounding put r past the last kept id: take the last one kept
        i = i - 1
    return int(ids[i].item())


def _host_sampler(params: SamplingParams, impl: str | None) -> Sampler:
    if params.temperature == 0:
        return lambda logits, rng: int(np.argmax(logits))
    kernel = _kernel()[0] if impl in (None, "c") and _kernel() is not None else None
    if impl == "c" and kernel is None:
        raise UserError("the C sampler is not built in this installation (reinstall with a C compiler)")
    if kernel is not None:
        inv_t, top_p, top_k, min_p = 1.0 / params.temperature, params.top_p, params.top_k, params.min_p

        def sample_c(logits: np.ndarray, rng: np.random.Generator) -> int:
            x = np.ascontiguousarray(logits, dtype=np.float32)
            w, ids = _scratch(x.size)
            token = kernel(x.ctypes.data, x.size, inv_t, top_p, top_k, min_p, rng.random(),
                           w.ctypes.data, ids.ctypes.data)
            if token < 0:
                raise ValueError("no token can be sampled: every logit is -inf")
            return int(token)

        return sample_c
    return _numpy_sampler(params)


def _numpy_sampler(params: SamplingParams) -> Sampler:
    def sample(logits: np.ndarray, rng: np.random.Generator) -> int:
        probs = softmax(logits / params.temperature)
        if params.min_p > 0:
            probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
        ids, p = _nucleus(probs, params.top_p, params.top_k)
        cdf = np.cumsum(p)
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])

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
