"""The session protocol on the torch reference backend: cache reuse is exact (up to the float32 rounding
of the logits: the comparisons run on the model in float64)."""

import numpy as np
import pytest

from userlm_local.text.conversation import Conversation
from userlm_local.runtime.decode import decode_steps, drive
from userlm_local.runtime.sampling import PRESETS, make_sampler, rng_for

INTENT = "You are a user chatting with an assistant language model to learn how to bake sourdough bread."


def prompt(backend, turns=2):
    conv = Conversation(backend.fmt, INTENT)
    for i in range(turns):
        conv.add_user(f"question number {i} about flour and water ratios")
        conv.add_assistant(f"Answer {i}: use about 70% hydration, then adjust to taste.")
    return conv.tokens


def tol(logits) -> float:
    """On the float64 model (``torch_backend64``) two ways of computing the same logits differ only by
    each one's rounding to float32, <= 2**-23 of the logits' scale; 2**-20 of it is 8x that, and a
    wrong cache or position moves logits by far more (one changed history token: > 0.1)."""
    return 2**-20 * float(np.abs(logits).max())


def test_turn_by_turn_equals_one_shot(torch_backend64):
    ids = prompt(torch_backend64)
    full = torch_backend64.logits(ids)
    s = torch_backend64.new_session()
    pieces = [ids[:7], ids[7:30], ids[30:31], ids[31:]]
    for piece in pieces:
        last = s.extend(piece)
        np.testing.assert_allclose(last, full[len(s.tokens) - 1], rtol=0, atol=tol(full))
    assert s.tokens == ids
    assert s.usage.decoded == len(ids)


def test_trim_then_extend_equals_fresh(torch_backend64):
    ids = prompt(torch_backend64)
    s = torch_backend64.new_session()
    s.extend(ids)
    assert s.trim(10) == len(ids) - 10
    other = [ids[0], 1000, 2000, 3000]
    last = s.extend(other)
    fresh = torch_backend64.logits(ids[:-10] + other)
    np.testing.assert_allclose(last, fresh[-1], rtol=0, atol=tol(fresh))


def test_score_is_teacher_forced_logprob(torch_backend64):
    ids = prompt(torch_backend64, 1)
    full = torch_backend64.logits(ids)
    start = len(ids) - 5
    lp = torch_backend64.score(ids, start)
    ref = [full[i - 1] - np.log(np.exp(full[i - 1] - full[i - 1].max()).sum()) - full[i - 1].max() for i in range(start, len(ids))]
    # Both are float32 log-softmaxes of the same float32 logits: each side rounds a few times at up to
    # twice the logits' scale (<= 8 * 2**-24 of it) and sums the vocabulary (log2(V) ~ 17 roundings of
    # the log-sum-exp): together < 50 * 2**-24 of the scale, inside 2**-18 of it.
    atol = 2**-18 * float(np.abs(full).max())
    np.testing.assert_allclose(lp, [r[t] for r, t in zip(ref, ids[start:])], rtol=0, atol=atol)


def test_greedy_generation_with_cache_equals_full_recompute(torch_backend):
    ids = prompt(torch_backend, 1)
    s = torch_backend.new_session()
    logits = s.extend(ids)
    sampler = make_sampler(PRESETS["greedy"])
    cached = drive(decode_steps(logits, sampler=sampler, rng=rng_for(0), max_tokens=12), s)
    # recompute every step from scratch, no cache
    seq, recomputed = list(ids), []
    for _ in range(12):
        nxt = int(np.argmax(torch_backend.logits(seq)[-1]))
        recomputed.append(nxt)
        seq.append(nxt)
    assert cached == recomputed
    # the decode loop fed back the sampled tokens except the last one
    assert s.usage.decoded == len(ids) + 11


def test_bfloat16_loads_and_agrees_on_top1(tiny_model):
    from userlm_local.runtime.backends.torch import load

    b16 = load(tiny_model, dtype="bfloat16")
    b32 = load(tiny_model)
    ids = prompt(b32, 1)
    l16, l32 = b16.logits(ids), b32.logits(ids)
    # bf16 keeps 8 significant bits: its logits sit a few 2**-8 of their scale from float32's (how, at a
    # given position, depends on the CPU's bf16 kernels), so where float32's top two are closer than
    # that either may come first.  bf16's top-1 must be within 2**-4 of the scale (16 such steps) of
    # float32's best; a wrongly loaded model picks tokens about the logits' spread (> 3) below it.
    chosen = l32[np.arange(len(ids)), l16.argmax(-1)]
    assert (l32.max(-1) - chosen).max() <= 2**-4 * np.abs(l32).max()


def test_context_overflow_is_a_user_error(torch_backend):
    from userlm_local.util.errors import UserError

    s = torch_backend.new_session()
    with pytest.raises(UserError, match="context"):
        s.extend([1] * (torch_backend.context_length + 1))
