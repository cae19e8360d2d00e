"""Turns over a persistent session: only new tokens are decoded, redraws never re-prefill."""

import numpy as np
import pytest

from userlm_local.simulation.guardrails import Guardrails, check, first_token_ids, processors, words
from userlm_local.runtime.sampling import PRESETS, Noise, SamplingParams, make_sampler
from userlm_local.simulation.user import EXHAUSTED, UserSimulator

INTENT = "You are a user chatting with an assistant language model to get tips for growing tomatoes."
REPLIES = ["Tomatoes need 6-8 hours of sun.", "Water deeply twice a week.", "Use a balanced fertilizer.",
           "Prune the suckers.", "Stake them early.", "Harvest when red."]


def run_turns(sim, seed=0, turns=6):
    user = sim.start(INTENT, seed=seed)
    out = []
    for i in range(turns):
        turn = user.next_turn()
        out.append(turn)
        if turn.outcome != "ok":
            break
        user.add_assistant(REPLIES[i])
    return user, out


def test_each_turn_decodes_only_its_new_tokens(torch_backend):
    sim = UserSimulator(torch_backend, sampling=PRESETS["paper"], max_new_tokens=12)
    user, turns = run_turns(sim)
    fmt = torch_backend.fmt
    assert turns[0].usage["cached_tokens"] == 0
    for prev, turn, reply in zip(turns, turns[1:], REPLIES):
        # new tokens: the previous turn's <|eot_id|> (plus its last sampled token when it was
        # cut at max_new_tokens), the assistant message and the open user header
        new = len(fmt.message("assistant", reply)) + len(fmt.open_user()) + (2 if prev.truncated else 1)
        assert turn.usage["prefill_tokens"] == new
    assert user.session.usage.decoded == len(user.session.tokens)


def test_same_seed_same_turns_and_different_seed_differs(torch_backend):
    sim = UserSimulator(torch_backend, max_new_tokens=10)
    a = [t.token_ids for t in run_turns(sim, seed=3, turns=3)[1]]
    b = [t.token_ids for t in run_turns(sim, seed=3, turns=3)[1]]
    c = [t.token_ids for t in run_turns(sim, seed=4, turns=3)[1]]
    assert a == b and a != c


def test_redraw_does_not_grow_prefill(torch_backend):
    # Impossible bounds force every draft to be rejected: all retries happen, prefill stays the prompt.
    g = Guardrails(min_words=1000, max_words=2000, max_retries=3)
    sim = UserSimulator(torch_backend, guardrails=g, max_new_tokens=6)
    user = sim.start(INTENT, seed=0)
    turn = user.next_turn()
    assert turn.outcome == EXHAUSTED
    assert len(turn.rejected) == 4 and all(r["reason"].startswith("too_short") for r in turn.rejected)
    prompt_len = len(user.conversation.tokens)
    assert turn.usage["prefill_tokens"] == prompt_len
    # the prompt was decoded once; every draft decoded only its own tokens
    assert user.session.usage.decoded == prompt_len + turn.usage["decode_tokens"]
    assert turn.usage["decode_tokens"] <= 4 * 5


def test_first_token_and_end_bans_hold(torch_backend):
    fmt = torch_backend.fmt
    banned = first_token_ids(fmt)
    assert {fmt.tokenizer.encode(w)[0] for w in ("I", " I", "You", " You", "Here", " here")} <= banned
    procs = processors(Guardrails.paper(), fmt)
    logits = np.zeros(torch_backend.tokenizer.vocab_size, dtype=np.float32)
    at_start = logits
    for p in procs:
        at_start = p([fmt.ids.newline], at_start)
    assert np.isneginf(at_start[sorted(banned)]).all()
    assert np.isneginf(at_start[fmt.ids.end_conversation])
    later = logits
    for p in procs:
        later = p([fmt.ids.newline, 500], later)
    assert np.isfinite(later[sorted(banned)]).all() and np.isneginf(later[fmt.ids.end_conversation])


def test_p_end_and_end_of_conversation(torch_backend64):
    fmt = torch_backend64.fmt

    class ForceEnd:
        """A logits processor that makes the model end: newline, then <|endconversation|>."""

        def __call__(self, turn, logits):
            out = np.full_like(logits, -np.inf)
            out[fmt.ids.end_conversation if turn else fmt.ids.newline] = 0
            return out

    sim = UserSimulator(torch_backend64, max_new_tokens=5)
    sim.processors = [ForceEnd()]
    user = sim.start(INTENT)
    turn = user.next_turn()
    assert turn.ended and turn.outcome == "ended" and turn.text == ""
    assert 0 < turn.p_end < 1
    assert user.conversation.ended
    # p_end is the model's own probability at the first content position (after the newline)
    s = torch_backend64.new_session()
    from userlm_local.runtime.sampling import softmax
    logits = s.extend(user.conversation.tokens[: -3] + [fmt.ids.newline])
    # Relative: P(end) is ~4e-8 here, so an absolute 1e-6 would pass anything.  On the float64 model
    # the turn's prefill-then-decode and this one pass differ only by each logit's rounding to float32,
    # <= 2**-23 of their scale, which moves log P by at most twice that; 2**-20 of it is 4x.
    rel = 2**-20 * float(np.abs(logits).max())
    assert turn.p_end == pytest.approx(float(softmax(logits)[fmt.ids.end_conversation]), rel=rel, abs=0)


def test_guardrail_checks():
    g = Guardrails.paper()
    assert check(g, "hi", None, []).startswith("too_short")
    assert check(g, " ".join(["word"] * 26), None, []).startswith("too_long")
    assert check(g, "what about tomatoes then", None, ["What about tomatoes, then?"]) == "repeated_user_turn"
    assert check(g, "get tips for growing tomatoes", INTENT, []) == "copied_intent"
    assert check(g, "how much sun do tomatoes need", INTENT, ["hello there friend"]) is None
    # one word splitter for guardrails and metrics: a curly apostrophe is a straight one
    assert words("It's a dog-friendly café, isn’t it?") == ["it's", "a", "dog-friendly", "caf", "isn't", "it"]


def test_sampler_top_p_keeps_the_nucleus_only():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    sample = make_sampler(SamplingParams(temperature=1.0, top_p=0.7))  # 0.5 + 0.25 covers 0.7
    noise = Noise.for_(0)
    seen = {sample(logits, noise.key(k)) for k in range(500)}
    assert seen == {0, 1}
    big = np.random.default_rng(0).normal(size=50_000).astype(np.float32)
    sample = make_sampler(SamplingParams(temperature=1.0, top_p=0.9))
    draws = [sample(big, noise.key(k)) for k in range(500, 550)]
    assert len(set(draws)) > 40  # a flat distribution: the nucleus is wide, not the top-256 partition


def test_misuse_is_named_before_any_turn(torch_backend):
    """Wrong types and values from Python: a message naming the argument, not an AttributeError
    from deep inside the first turn."""
    from userlm_local.util.errors import UserError

    for kwargs, needle in [({"sampling": "paper"}, "sampling must be a SamplingParams"),
                           ({"guardrails": "paper"}, "guardrails must be a Guardrails instance"),
                           ({"guardrails": Guardrails}, "guardrails must be a Guardrails instance"),
                           ({"max_new_tokens": 1}, "max_new_tokens must be at least 2")]:
        with pytest.raises((TypeError, UserError), match=needle):
            UserSimulator(torch_backend, **kwargs)
    with pytest.raises(TypeError, match="backend must be a loaded model"):
        UserSimulator("tiny")
    sim = UserSimulator(torch_backend, max_new_tokens=8)
    with pytest.raises(TypeError, match="the intent must be a str"):
        sim.start(123)
    with pytest.raises(TypeError, match="seed must be an int"):
        sim.start("You want a recipe.", seed=None)
    user = sim.start("You want a recipe.")
    with pytest.raises(UserError, match="the user.s turn comes first"):
        user.add_assistant("Sure.")
    user.next_turn()
    with pytest.raises(TypeError, match="reply must be a str"):
        user.add_assistant(None)
    with pytest.raises(UserError, match="add the assistant.s reply first"):
        user.next_turn()
    for bad in ({"min_p": 2.0}, {"temperature": float("nan")}, {"top_k": -5}):
        with pytest.raises(UserError):
            SamplingParams(**bad)


def test_a_path_instead_of_a_loaded_model_is_refused_in_one_line(tiny_model):
    # the library's most likely misuse: UserSimulator("model.gguf") instead of a loaded backend
    with pytest.raises(TypeError, match="must be a loaded model"):
        UserSimulator(str(tiny_model))
