"""Token-level comparison of a candidate's next-token distributions with REF's, at the same
positions: KL(REF || CAND), same top-1, how much of REF's nucleus CAND keeps, and llama.cpp's
statistics (Δp, KLD p99.9), with the KLD split by REF's confidence."""

from __future__ import annotations

import numpy as np

from ..util.errors import UserError

NUCLEUS_P = 0.8
TOPS = (64, 2048)  # how many of REF's most likely tokens the nucleus is looked for in, in turn


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
    kept, ref_top1_p = nucleus_kept(ref_rows, pr, lc)
    out = {"kld": kld, "top1": top1, "nucleus_kept": kept, "ref_top1_p": ref_top1_p}
    if tokens is not None and len(tokens) == len(kld):
        at = np.arange(len(kld))
        out["dp"] = np.exp(lc[at, tokens]) - pr[at, tokens]
    return out


def nucleus_kept(ref_rows: np.ndarray, pr: np.ndarray, lc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position, CAND's mass on REF's top-p nucleus (the smallest set of REF's most likely
    tokens reaching mass p) over REF's, and REF's top-1 probability.  The nucleus is looked for in
    REF's ``TOPS[0]`` most likely tokens, then in more for the rows where those fall short of p,
    then in the whole vocabulary: a full sort of a 49k vocabulary per row was most of a
    candidate's token statistics, and a partial selection is linear."""
    n, v = ref_rows.shape
    kept, top_p = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for k in [t for t in TOPS if t < v] + [v]:
        if k < v:  # REF's k most likely tokens, unordered: a selection, linear in the vocabulary
            idx = np.argpartition(ref_rows[todo], v - k, axis=1)[:, v - k:]
        else:
            idx = np.broadcast_to(np.arange(v), (len(todo), v))
        at = todo[:, None]
        idx = np.take_along_axis(idx, np.argsort(-ref_rows[at, idx], axis=1), axis=1)  # most likely first
        sorted_p = pr[at, idx]
        mass = np.cumsum(sorted_p, axis=1)
        # the nucleus ends inside these k when their mass reaches p: the full sort's own test, on the
        # same running sums (a pairwise sum could round to the other side of p)
        done = mass[:, -1] >= NUCLEUS_P if k < v else np.ones(len(todo), bool)
        keep = (mass - sorted_p < NUCLEUS_P)[done]  # the smallest set reaching mass p
        rows = todo[done]
        kept[rows] = (np.exp(lc[rows[:, None], idx[done]]) * keep).sum(axis=1) / (sorted_p[done] * keep).sum(axis=1)
        top_p[rows] = sorted_p[done, 0]
        todo = todo[~done]
        if not len(todo):
            break
    return kept, top_p


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
