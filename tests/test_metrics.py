"""The paper's metrics on hand-computed cases."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from userlm_local.evaluation.metrics import (best_f1, f1_at, first_turn_diversity, intent_decomposition, perplexity,
                                  roc_auc, turn_overlap, unigram_set)


def test_perplexity_is_micro_averaged():
    lps = [[math.log(0.5)], [math.log(0.25), math.log(0.125)]]
    assert perplexity(lps) == pytest.approx(4.0)  # exp((1+2+3)/3 · ln 2); macro would give 2^(1+2.5)/2
    assert perplexity([[0.0, 0.0]]) == 1.0
    with pytest.raises(ValueError):
        perplexity([[], []])


def test_unigrams():
    assert unigram_set("Don't STOP—it's 3-D, ok? ok") == {"don't", "stop", "it's", "3-d", "ok"}


def test_first_turn_diversity_hand_computed():
    # J(ab, ac) = 1/3, the two pairs with "d" are 0: mean 1/9
    assert first_turn_diversity(["a b", "a c", "d"]) == pytest.approx(100 * 8 / 9)
    assert first_turn_diversity(["same words here", "Same words, here!"]) == pytest.approx(0.0)
    assert first_turn_diversity(["", "..."]) == pytest.approx(0.0)  # two empty sets count as identical
    assert first_turn_diversity(["x y", "z"]) == pytest.approx(100.0)


def test_first_turn_diversity_vectorised_matches_pairwise():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(600)]
    sets = [unigram_set(t) for t in texts]
    jac = [1.0 if not (a | b) else len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
    assert first_turn_diversity(texts) == pytest.approx(100 * (1 - sum(jac) / len(jac)), rel=1e-9)


def test_roc_auc_rank_statistic():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # ties count half
    assert roc_auc([0.9, 0.1, 0.2], [True, False, False]) == 1.0
    assert math.isnan(roc_auc([0.1, 0.2], [0, 0]))


def test_termination_f1():
    scores, labels = [0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0]
    assert f1_at(scores, labels, 0.9) == pytest.approx(2 / 3)
    assert f1_at(scores, labels, 0.5) == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert f1_at(scores, labels, 0.95) == 0.0
    f1, t = best_f1(scores, labels)
    assert f1 == pytest.approx(0.8) and t == 0.3  # tp 2, fp 1, fn 0
    assert best_f1([0.4, 0.4, 0.1], [1, 0, 0]) == (pytest.approx(2 / 3), 0.4)


def test_intent_decomposition():
    intent = "You are a user chatting with an assistant language model to learn about python decorators."
    assert turn_overlap(intent, "how do python decorators work") == pytest.approx(2 / 3)
    assert turn_overlap(intent, "the and of") == 0.0
    # the fixed prefix is stripped: "assistant", "model", "language" do not count
    assert turn_overlap(intent, "assistant language model") == 0.0
    assert intent_decomposition([(intent, ["how do python decorators work", "thanks"])]) == pytest.approx(100 / 3)


def test_assistant_repetition_finds_copies_and_loops_and_not_ordinary_replies():
    from userlm_local.evaluation.metrics.repetition import assistant_repetition, loops, repeats_earlier

    poem = "Roses are red, the sky is wide, and every river finds the sea at last."
    loop = "A man of the heart, " * 15
    code = "".join(f"#define NUM_LEDS {i}\n" for i in range(10, 40))
    prose = ("Vaccines expose the immune system to a harmless piece or copy of a pathogen. B cells learn to make "
             "antibodies against it and memory cells remember it, so a later infection is met quickly, often "
             "before it causes any symptoms. Boosters refresh that memory when it fades over the years.")
    assert loops(loop) and loops(code) and not loops(prose) and not loops("ok " * 10)  # too short to judge
    assert repeats_earlier(poem + " Thanks!", [poem]) and not repeats_earlier(prose, [poem])
    assert not repeats_earlier("Yes.", ["Yes."])  # under 3 words: never a repeat
    got = assistant_repetition([[poem, poem + " Again.", poem], [prose, loop], [prose]])
    assert got["replies"] == 6 and got["repeat_earlier"] == 2 and got["loop_inside"] == 1
    assert got["conversations_all_repeats"] == 1 and got["conversations_with_2_plus_replies"] == 2


def test_repetition_penalty_divides_seen_logits_and_spares_the_stop_ids():
    import numpy as np

    from userlm_local.util.errors import UserError
    from userlm_local.runtime.sampling import repetition_penalty

    logits = np.array([2.0, -2.0, 4.0, 1.0, 3.0], dtype=np.float32)
    proc = repetition_penalty(2.0, [0, 1, 4], exempt=frozenset({4}))
    out = proc([], logits)
    assert out.tolist() == [1.0, -4.0, 4.0, 1.0, 3.0] and logits[0] == 2.0  # input untouched
    assert proc([3], logits).tolist() == [1.0, -4.0, 4.0, 0.5, 3.0]  # the reply's own ids count too
    assert repetition_penalty(1.0, [0])([], logits) is logits  # 1: off
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="repeat penalty must be a number >= 1"):
            repetition_penalty(bad, [])
