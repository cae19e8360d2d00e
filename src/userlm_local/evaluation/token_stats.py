"""Token-level comparison of a candidate's next-token distributions with REF's, at the same
positions: KL(REF || CAND), same top-1, how much of REF's nucleus CAND keeps, and llama.cpp's
statistics (Δp, KLD p99.9), with the KLD split by REF's confidence."""

from __future__ import annotations

import numpy as np

from ..util.errors import UserError

NUCLEUS_P = 0.8


def token_stats(ref_rows: np.ndarray, cand_rows: np.ndarray, tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per position: KL(REF || CAND), same top-1, CAND's mass on REF's top-p nucleus over REF's,
    REF's top-1 probability, and with ``tokens`` (the token actually there) llama.cpp's Δp: the
    change in that token's probability, CAND minus REF."""
    if ref_rows.shape != cand_rows.shape:
        raise UserError("a candidate's distributions do not line up with REF's (vocabulary differs)")
    pr = np.exp(ref_rows.astype(np.float64))
    lc = cand_rows.astype(np.float64)
    kld = np.maximum((pr * (ref_rows - lc)).sum(axis=1), 0.0)
    top1 = ref_rows.argmax(axis=1) == cand_rows.argmax(axis=1)
    order = np.argsort(-ref_rows, axis=1)
    sorted_p = np.take_along_axis(pr, order, axis=1)
    keep = np.cumsum(sorted_p, axis=1) - sorted_p < NUCLEUS_P  # the smallest set reaching mass p
    ref_mass = (sorted_p * keep).sum(axis=1)
    cand_mass = (np.take_along_axis(np.exp(lc), order, axis=1) * keep).sum(axis=1)
    out = {"kld": kld, "top1": top1, "nucleus_kept": cand_mass / ref_mass, "ref_top1_p": sorted_p[:, 0]}
    if tokens is not None and len(tokens) == len(kld):
        at = np.arange(len(kld))
        out["dp"] = np.exp(lc[at, tokens]) - pr[at, tokens]
    return out


# REF's confidence at a position (its top-1 probability), to tell where the KLD is spent
CONFIDENCE = (("low", 0.0, 0.5), ("medium", 0.5, 0.9), ("high", 0.9, 1.0 + 1e-9))


def llama_cpp_stats(kld: np.ndarray, dp: np.ndarray, ref_top1_p: np.ndarray) -> dict:
    """The statistics llama.cpp's perplexity tool prints for a KL-divergence run, on our positions:
    Δp mean, RMS and percentiles, KLD p99.9, and the KLD split by REF's confidence."""
    if not len(kld):
        return {}
    pct = lambda x, q: float(np.percentile(x, q))  # noqa: E731
    out = {"kld_p99_9": pct(kld, 99.9)}
    if len(dp):
        out.update({"dp_mean": float(dp.mean()), "dp_rms": float(np.sqrt((dp ** 2).mean())),
                    **{f"dp_p{q:g}".replace(".", "_"): pct(dp, q) for q in (1, 5, 10, 50, 90, 95, 99)}})
    for name, lo, hi in CONFIDENCE:
        sel = (ref_top1_p >= lo) & (ref_top1_p < hi)
        out[f"kld_mean_{name}_confidence"] = float(kld[sel].mean()) if sel.any() else None
        out[f"positions_{name}_confidence"] = int(sel.sum())
    return out
