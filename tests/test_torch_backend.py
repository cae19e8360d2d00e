"""The session protocol on the torch reference backend: cache reuse is exact (within 1e-4)."""

import numpy as np
import pytest

from userlm_local.conversation import Conversation
from userlm_local.generate import decode_steps, drive
from userlm_local.sampling import PRESETS, make_sampler, rng_for

TOL = 1e-4
INTENT = "You are a user chatting with an assistant language model to learn how to bake sourdough bread."


def prompt(backend, turns=2):
    conv = Conversation(backend.fmt, INTENT)
    for i in range(turns):
        conv.add_user(f"question number {i} about flour and water ratios")
        conv.add_assistant(f"Answer {i}: use about 70% hydration, then adjust to taste.")
    return conv.tokens


def test_turn_by_turn_equals_one_shot(torch_backend):
    ids = prompt(torch_backend)
    full = torch_backend.logits(ids)
    s = torch_backend.new_session()
    pieces = [ids[:7], ids[7:30], ids[30:31], ids[31:]]
    for piece in pieces:
        last = s.extend(piece)
        np.testing.assert_allclose(last, full[len(s.tokens) - 1], atol=TOL)
    assert s.tokens == ids
    assert s.usage.decoded == len(ids)


def test_trim_then_extend_equals_fresh(torch_backend):
    ids = prompt(torch_backend)
    s = torch_backend.new_session()
    s.extend(ids)
    assert s.trim(10) == len(ids) - 10
    other = [ids[0], 1000, 2000, 3000]
    last = s.extend(other)
    fresh = torch_backend.logits(ids[:-10] + other)
    np.testing.assert_allclose(last, fresh[-1], atol=TOL)


def test_fork_and_snapshot_equal_fresh_sessions(torch_backend):
    ids = prompt(torch_backend, 1)
    s = torch_backend.new_session()
    s.extend(ids)
    state = s.snapshot()
    f = s.fork()
    a = s.extend([500, 600])
    b = f.extend([700])
    full_a, full_b = torch_backend.logits(ids + [500, 600]), torch_backend.logits(ids + [700])
    np.testing.assert_allclose(a, full_a[-1], atol=TOL)
    np.testing.assert_allclose(b, full_b[-1], atol=TOL)
    r = torch_backend.restore(state)
    assert r.tokens == ids
    np.testing.assert_allclose(r.extend([700]), full_b[-1], atol=TOL)
    # the original session was not disturbed by the restore
    assert s.tokens == ids + [500, 600]


def test_score_is_teacher_forced_logprob(torch_backend):
    ids = prompt(torch_backend, 1)
    full = torch_backend.logits(ids)
    start = len(ids) - 5
    lp = torch_backend.score(ids, start)
    ref = [full[i - 1] - np.log(np.exp(full[i - 1] - full[i - 1].max()).sum()) - full[i - 1].max() for i in range(start, len(ids))]
    np.testing.assert_allclose(lp, [r[t] for r, t in zip(ref, ids[start:])], atol=TOL)


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
    from userlm_local.backends.torch import load

    b16 = load(tiny_model, dtype="bfloat16")
    b32 = load(tiny_model)
    ids = prompt(b32, 1)
    l16, l32 = b16.logits(ids), b32.logits(ids)
    assert (l16.argmax(-1) == l32.argmax(-1)).mean() > 0.9


def test_context_overflow_is_a_user_error(torch_backend):
    from userlm_local.errors import UserError

    s = torch_backend.new_session()
    with pytest.raises(UserError, match="context"):
        s.extend([1] * (torch_backend.context_length + 1))
