"""Coupled sampling: every draw is Gumbel-max over the nucleus with noise keyed by the draw's place
(``Noise``), so it samples the nucleus distribution exactly, the C kernel, the numpy reference and
torch pick the same token for the same key, and two nearly equal models draw the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

from test_sampling_kernel import _rows, chi_square_p, expected
from userlm_local.runtime.decode import decode_steps, drive
from userlm_local.runtime.sampling import (Noise, SamplingParams, icdf_sampler, kernel_nucleus, make_sampler, mix64,
                                           token_uniforms, torch_sample)
from userlm_local.simulation.guardrails import Guardrails
from userlm_local.simulation.user import UserSimulator

INTENT = "You are a user chatting with an assistant language model to get tips for growing tomatoes."
REPLIES = ["Tomatoes need 6-8 hours of sun.", "Water deeply twice a week.", "Use a balanced fertilizer."]


def test_the_keys_and_the_hash():
    """Keys are pinned (a seeded transcript changes only when this scheme does); the token hash is
    splitmix64 (the numpy version checked against plain Python integers)."""
    noise = Noise.for_(0, "intent-1", 0)
    assert noise.state == 18210564401181161052
    assert noise.child(2, 1) == Noise(9267685036258689996)
    assert noise.child(2, 1).key(5) == 1692189545384827371
    assert noise.child(2, 1) != noise.child(1, 2) and noise.key(0) != noise.key(1)
    key = noise.key(3)
    ids = np.array([0, 1, 7, 128256, 2**31 - 1])
    want = [((mix64((key + (i + 1) * 0x9E3779B97F4A7C15) % 2**64) >> 12) + 0.5) / 2**52 for i in ids.tolist()]
    assert token_uniforms(key, ids).tolist() == want
    assert all(0 < u < 1 for u in token_uniforms(key, np.arange(100000)))


def test_the_draw_is_the_nucleus_distribution():
    """A wide nucleus (hundreds of ids) drawn with many keys: the renormalised nucleus, nothing
    outside it; numpy gives the kernel's token for every key."""
    logits = (np.random.default_rng(5).normal(size=1000) * 0.7).astype(np.float32)
    logits[[3, 30, 300]] = -np.inf
    params = SamplingParams(1.0, 0.8)
    noise = Noise.for_(11, "wide")
    c, ref = make_sampler(params, impl="c"), make_sampler(params, impl="numpy")
    drawn = [c(logits, noise.key(k)) for k in range(100_000)]
    probs = expected(logits.astype(np.float64), params)
    counts = np.bincount(drawn, minlength=logits.size)
    assert counts[probs == 0].sum() == 0 and (probs > 0).sum() > 400
    assert chi_square_p(counts, probs) > 1e-4
    assert drawn[:1000] == [ref(logits, noise.key(k)) for k in range(1000)]


CASES = [SamplingParams(1.0, 0.8), SamplingParams(0.6, 0.9), SamplingParams(1.0, 1.0),
         SamplingParams(1.0, 0.9, top_k=50), SamplingParams(1.0, 0.95, min_p=0.05)]


@pytest.mark.parametrize("params", CASES)
def test_c_numpy_and_torch_pick_the_same_token(params):
    """Every row shape the kernel has a path for (wide and narrow nuclei, ties at the cut, the tail
    bucket, banned ids): the same token from all three for every key.  A row whose two nuclei differ
    at the cut (float32 against float64 rounding, see test_the_nucleus_is_the_reference_set_exactly)
    is left out."""
    torch = pytest.importorskip("torch")
    c, ref = make_sampler(params, impl="c"), make_sampler(params, impl="numpy")
    noise = Noise.for_(3, "same-token")
    compared = 0
    for name, row in _rows():
        if row.size > 130_000:
            continue
        logits = row.astype(np.float32)
        if (kernel_nucleus(logits, params) != (expected(logits.astype(np.float64), params) > 0)).any():
            continue
        t = torch.tensor(logits)
        for k in range(6):
            key = noise.key(k)
            got = (c(logits, key), ref(logits, key), torch_sample(t, params, key))
            assert got[0] == got[1] == got[2], (name, k, got)
            compared += 1
    assert compared >= 60


def test_a_perturbed_distribution_changes_few_tokens():
    """Two nearly equal distributions with the same keys: the share of keys that pick different
    tokens is at least TV (no coupling does better) and at most the Gumbel-max bound 2 TV / (1 + TV);
    the previous inverse-CDF draw with the same uniforms differs far more often."""
    rng = np.random.default_rng(8)
    x = (rng.normal(size=2000) * 1.5).astype(np.float32)
    y = (x + rng.normal(size=x.size) * 0.05).astype(np.float32)
    params = SamplingParams(1.0, 0.8)
    p, q = expected(x.astype(np.float64), params), expected(y.astype(np.float64), params)
    tv = 0.5 * np.abs(p - q).sum()
    sample, noise, n = make_sampler(params), Noise.for_(0, "perturbed"), 20_000
    differ = np.mean([sample(x, noise.key(k)) != sample(y, noise.key(k)) for k in range(n)])
    bound = 2 * tv / (1 + tv)
    slack = 4 * np.sqrt(bound / n)
    assert tv - slack <= differ <= bound + slack, (tv, differ, bound)
    old = icdf_sampler(params)
    ra, rb = np.random.default_rng(1), np.random.default_rng(1)
    old_differ = np.mean([old(x, ra) != old(y, rb) for _ in range(5000)])
    assert old_differ > 3 * differ, (old_differ, differ)


def _conversation(sim, seed, key, turns=3):
    user = sim.start(INTENT, seed=seed, key=key)
    out = []
    for i in range(turns):
        turn = user.next_turn()
        out.append((turn.token_ids, [r["text"] for r in turn.rejected], turn.outcome))
        if turn.outcome != "ok":
            break
        user.add_assistant(REPLIES[i])
    return out


def test_two_copies_of_one_model_give_identical_user_turns(torch_backend, torch_backend64, tiny_model):
    """The same model loaded twice, and a copy whose logits differ by rounding (the float64 cast),
    with the same seed and keys: identical turns, redraws included (the paper's guardrails, at
    8 words at least so that the tiny model's turns are redrawn now and then)."""
    from userlm_local.runtime.backends.torch import load

    g = Guardrails.paper(min_words=8)
    copies = (torch_backend, load(tiny_model), torch_backend64)
    sims = [UserSimulator(b, guardrails=g, max_new_tokens=12) for b in copies]
    redraws = 0
    for i in range(3):
        a, b, c = (_conversation(s, 7, ("intent", i, 0)) for s in sims)
        assert a == b == c
        redraws += sum(len(t[1]) for t in a)
    assert redraws > 0  # the redraws' noise is keyed (turn, attempt) as well


def test_a_perturbed_model_keeps_most_turns(torch_backend):
    """A model whose logits are nudged (N(0, 0.02) per logit, fixed per position): with the same
    noise most user turns are unchanged; with other seeds (independent draws) almost none are."""

    def nudge(turn_ids, logits):
        return logits + np.random.default_rng(len(turn_ids)).normal(size=logits.size).astype(np.float32) * 0.02

    ref = UserSimulator(torch_backend, max_new_tokens=10)
    cand = UserSimulator(torch_backend, max_new_tokens=10)
    cand.processors = [*cand.processors, nudge]
    same = other = total = 0
    for i in range(6):
        a = _conversation(ref, 1, ("intent", i))
        b = _conversation(cand, 1, ("intent", i))
        c = _conversation(cand, 2, ("intent", i))
        for ta, tb, tc in zip(a, b, c):
            total += 1
            same += ta[0] == tb[0]
            other += ta[0] == tc[0]
    assert same >= 0.6 * total and other <= 0.2 * total, (same, other, total)


def test_a_conversation_is_the_same_whatever_runs_beside_it(torch_backend):
    """Turn by turn interleaved with other conversations on the same simulator, a conversation's
    turns are those it has alone: its draws depend on its own keys and places only."""
    sim = UserSimulator(torch_backend, guardrails=Guardrails.paper(), max_new_tokens=10)
    alone = _conversation(sim, 4, ("a", 0))
    users = [sim.start(INTENT, seed=4, key=k) for k in (("b", 0), ("a", 0), ("c", 1))]
    turns: list[list] = [[], [], []]
    for i in range(3):
        for u, out in zip(users, turns):
            if out and out[-1][2] != "ok":
                continue
            turn = u.next_turn()
            out.append((turn.token_ids, [r["text"] for r in turn.rejected], turn.outcome))
            if turn.outcome == "ok":
                u.add_assistant(REPLIES[i])
    assert turns[1] == alone and turns[0] != alone


def test_a_continued_request_draws_what_one_request_would(torch_backend):
    """Keyed by absolute position (as the server keys a choice): decoding 3 ids, then 3 more from
    the prompt plus those, gives the 6 ids one request gives."""
    sample, noise = make_sampler(SamplingParams(1.0, 1.0)), Noise.for_(9, 0)
    prompt = torch_backend.fmt.start() + torch_backend.fmt.open_user()

    def run(ids, n):
        s = torch_backend.new_session()
        try:
            return drive(decode_steps(s.extend(ids), sampler=sample, noise=noise, first_position=len(ids),
                                      max_tokens=n), s)
        finally:
            s.close()

    first = run(prompt, 3)
    assert run(prompt, 6) == first + run(prompt + first, 3)
