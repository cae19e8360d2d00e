"""The C nucleus sampler (kernels/nucleus.c) against the numpy reference: same nucleus, same
distribution (chi-square over many keys), bans exact, and the draw a function of (logits, key)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from userlm_local.runtime.sampling import (Noise, SamplingParams, backend, kernel_nucleus, make_sampler, rng_for,
                                           torch_sample)

PROBS = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02])


def expected(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """The reference's nucleus distribution, written out directly."""
    w = np.exp((logits - logits.max()) / p.temperature)
    w = w / w.sum()
    if p.min_p:
        w = np.where(w >= p.min_p * w.max(), w, 0.0)
    order = np.argsort(-w, kind="stable")
    k = p.top_k or len(w)
    kept = []
    mass = 0.0
    for i in order[:k]:
        if w[i] == 0:
            break
        kept.append(i)
        mass += w[i]
        if p.top_p < 1 and mass >= p.top_p:
            break
    out = np.zeros_like(w)
    out[kept] = w[kept] / w[kept].sum()
    return out


def chi_square_p(observed: np.ndarray, probs: np.ndarray) -> float:
    """Upper-tail p-value (Wilson-Hilferty approximation of the chi-square distribution)."""
    mask = probs > 0
    e = probs[mask] * observed.sum()
    x = float(((observed[mask] - e) ** 2 / e).sum())
    k = int(mask.sum()) - 1
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_the_kernel_is_built():
    assert backend() == "c", "kernels/nucleus.c was not compiled at install (is a C compiler installed?)"


@pytest.mark.parametrize("params", [SamplingParams(1.0, 0.8), SamplingParams(0.7, 1.0),
                                    SamplingParams(1.0, 0.95, top_k=4), SamplingParams(1.3, 0.9, min_p=0.2)])
@pytest.mark.parametrize("impl", ["c", "numpy"])
def test_same_distribution_as_the_reference(params, impl):
    logits = np.log(PROBS).astype(np.float32)
    logits = np.concatenate([logits, [-np.inf, -np.inf]]).astype(np.float32)  # two banned ids
    sample = make_sampler(params, impl=impl)
    noise = Noise.for_(7, "chi-square")
    draws = np.bincount([sample(logits, noise.key(k)) for k in range(20000)], minlength=len(logits))
    probs = expected(logits.astype(np.float64), params)
    assert draws[probs == 0].sum() == 0  # nothing outside the nucleus, no banned id
    assert chi_square_p(draws, probs) > 1e-4


def test_wide_nucleus_at_a_large_vocabulary_matches_the_reference_set():
    """Flat logits at 128k: the nucleus is most of the vocabulary; the kernel's set is the
    reference's set (checked through the support of many draws at temperature 1)."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=128257) * 0.5).astype(np.float32)
    logits[[5, 77, 1000]] = -np.inf
    probs = expected(logits.astype(np.float64), SamplingParams(1.0, 0.8))
    sample = make_sampler(SamplingParams(1.0, 0.8), impl="c")
    noise = Noise.for_(1)
    drawn = np.array([sample(logits, noise.key(k)) for k in range(3000)])
    assert (probs[drawn] > 0).all()  # every draw inside the reference's nucleus
    assert len(set(drawn.tolist())) > 2000  # and the nucleus is wide, as it should be


def _rows():
    """(name, logits) rows of every shape the kernel has a path for."""
    rng = np.random.default_rng(11)
    for n in (9, 1000, 32000, 128257, 256000):
        yield f"flat-{n}", rng.normal(size=n) * 0.5
        yield f"peaked-{n}", rng.normal(size=n) * 4
    yield "ties", np.round(rng.normal(size=50000) * 2, 1)  # many equal logits around the cut
    yield "two-levels", np.where(rng.random(40000) < 0.01, 5.0, 0.0)  # the cut inside a block of ties
    yield "very-peaked", rng.normal(size=128257) * 40  # the nucleus reaches the tail bucket
    x = rng.normal(size=128257)
    x[rng.random(x.size) < 0.3] = -np.inf  # a third banned
    yield "banned", x


@pytest.mark.parametrize("params", [SamplingParams(1.0, 0.8), SamplingParams(0.6, 0.9), SamplingParams(1.0, 0.999),
                                    SamplingParams(1.0, 1.0), SamplingParams(1.0, 0.9, top_k=50),
                                    SamplingParams(1.0, 0.95, min_p=0.05)])
def test_the_nucleus_is_the_reference_set_exactly(params):
    """The kernel's nucleus (every id it can draw) against the reference's, id for id.  Its
    weights are float32 where the reference's are float64: ids whose weight is under 1e-30 of
    the top one (float32 underflows there; the reference keeps them at top_p = 1, to be drawn
    with probability < 1e-30) are not compared, and the one id at the cut may differ only when
    the cumulative mass there is within 1e-6 of top_p."""
    for name, row in _rows():
        logits = row.astype(np.float32)
        w = np.exp((logits.astype(np.float64) - logits.max()) / params.temperature)
        ref = expected(logits.astype(np.float64), params) > 0
        got = kernel_nucleus(logits, params)
        diff = np.flatnonzero((ref != got) & (w >= 1e-30))
        if diff.size:
            w /= w.sum()
            order = np.argsort(-w, kind="stable")
            cum = np.cumsum(w[order])
            at = {int(i): k for k, i in enumerate(order)}
            assert diff.size == 1, (name, diff.size)
            k = at[int(diff[0])]
            assert min(abs(cum[k] - params.top_p), abs(cum[k - 1] - params.top_p)) < 1e-6, (name, cum[k])


def test_the_draw_is_a_function_of_the_logits_and_the_key():
    """Same key, same token, whatever was drawn before; a Generator in place of a key gives a
    seeded, uncoupled stream (one key drawn from it per token)."""
    logits = (np.random.default_rng(3).normal(size=50000) * 2).astype(np.float32)
    noise = Noise.for_(0, "k")
    for impl in ("c", "numpy"):
        sample = make_sampler(SamplingParams(1.0, 0.8), impl=impl)
        a = [sample(logits, noise.key(k)) for k in range(50)]
        assert a[::-1] == [sample(logits, noise.key(k)) for k in reversed(range(50))]
        assert len(set(a)) > 10
        r, ref = rng_for(0, "k"), rng_for(0, "k")
        assert sample(logits, r) == sample(logits, int(ref.integers(0, 1 << 64, dtype=np.uint64)))
        assert r.random() == ref.random()  # one key taken from the stream per token


def test_every_id_banned_is_an_error():
    for impl in ("c", "numpy"):
        sample = make_sampler(SamplingParams(1.0, 0.8), impl=impl)
        with pytest.raises(ValueError):
            sample(np.full(10, -np.inf, dtype=np.float32), 0)


@pytest.mark.parametrize("params", [SamplingParams(1.0, 0.8), SamplingParams(0.7, 1.0),
                                    SamplingParams(1.0, 0.95, top_k=4), SamplingParams(1.3, 0.9, min_p=0.2)])
def test_the_device_sampler_draws_from_the_reference_distribution(params):
    """``torch_sample`` (what runs on a GPU; here on a CPU tensor): same nucleus, same
    distribution (chi-square), and the host's token for every key."""
    torch = pytest.importorskip("torch")
    logits = np.concatenate([np.log(PROBS), [-np.inf, -np.inf]]).astype(np.float32)
    t = torch.tensor(logits)
    noise = Noise.for_(7, "chi-square", "torch")
    drawn = [torch_sample(t, params, noise.key(k)) for k in range(20000)]
    draws = np.bincount(drawn, minlength=len(logits))
    probs = expected(logits.astype(np.float64), params)
    assert draws[probs == 0].sum() == 0
    assert chi_square_p(draws, probs) > 1e-4
    host = make_sampler(params)
    assert drawn[:2000] == [host(logits, noise.key(k)) for k in range(2000)]
    sample = make_sampler(params)  # the one sampler takes both kinds of logits
    assert sample(t, 3) == torch_sample(t, params, 3) == sample(logits, 3)
