"""``userlm-local score``: perplexity and termination stats, end to end on the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from userlm_local.cli import main
from userlm_local.evaluation.scoring import score_dialogues
from userlm_local.data import Dialogue, flip, load_dialogues
from userlm_local.data.flip import IGNORE


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("USERLM_LOCAL_CACHE", str(tmp_path_factory.getbasetemp() / "userlm-data-cache"))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_score_matches_a_direct_computation(torch_backend64):
    # On the float64 model: the report's log-probs (a float32 log-softmax) and the direct float64 ones
    # then differ only by float32 rounding, a few 2**-24 of the logits' scale (~17): < 1e-5 on any
    # log-prob, far inside the relative 1e-4 on perplexity and 1e-3 on P(end) asked below.
    fmt = torch_backend64.fmt
    d = Dialogue("hand", [
        {"role": "user", "content": "help me plan a hike"}, {"role": "assistant", "content": "Where?"},
        {"role": "user", "content": "near the lake"}, {"role": "assistant", "content": "Try the north trail."},
    ], "You are a user chatting with an assistant language model to plan a hike.")
    report = score_dialogues(torch_backend64, [d], max_len=2048, progress=False)
    for key, with_intent in (("ppl_with_intent", True), ("ppl_without_intent", False)):
        total, n = 0.0, 0
        for s in flip(fmt, d, with_intent=with_intent):
            lp = log_softmax(torch_backend64.logits(s.input_ids))
            for i, t in enumerate(s.labels):
                if t != IGNORE:
                    total += lp[i - 1, t]
                    n += 1
        assert report[key] == pytest.approx(math.exp(-total / n), rel=1e-4)
    assert report["n_samples"] == 3 and report["n_conversations"] == 1
    assert report["with_intent"]["n_passes"] == report["without_intent"]["n_passes"] == 1  # single pass
    assert report["n_tokens"] == sum(len(fmt.body(t)) + 1 for t in d.user_turns()) + 3
    # termination probes: after assistant turn 1 (not an end) and after the last one (the end)
    probes = []
    for s in flip(fmt, d)[1:]:
        prompt = s.input_ids[:s.labels.index(next(t for t in s.labels if t != IGNORE))]
        lp = log_softmax(torch_backend64.logits(prompt + [fmt.ids.newline]))
        probes.append(math.exp(lp[-1, fmt.ids.end_conversation]))
    assert report["p_end_mean_elsewhere"] == pytest.approx(probes[0], rel=1e-3)
    assert report["p_end_mean_at_end"] == pytest.approx(probes[1], rel=1e-3)
    assert report["termination_auc"] == (1.0 if probes[1] > probes[0] else 0.0)
    assert report["n_end"] == 1 and report["n_elsewhere"] == 1


def test_score_cli_json(tiny_model, capsys):
    rc = main(["score", str(tiny_model), "--limit", "2", "--json", "--max-len", "384"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)
    for key in ("ppl_with_intent", "ppl_without_intent", "n_tokens", "convention", "n_conversations",
                "n_samples", "p_end_mean_at_end", "p_end_mean_elsewhere", "termination_auc",
                "termination_f1", "termination_f1_threshold"):
        assert key in report
    assert report["n_conversations"] == 2
    assert math.isfinite(report["ppl_with_intent"]) and report["ppl_with_intent"] > 1
    assert math.isfinite(report["ppl_without_intent"]) and report["ppl_without_intent"] > 1
    assert report["ppl_with_intent"] != report["ppl_without_intent"]
    assert "<|eot_id|>" in report["convention"] and "'\\n'" in report["convention"]
    assert 0 <= report["termination_f1"] <= 1
    assert "scoring" in err and "tok/s" in err  # the progress bar goes to stderr, with the model's speed
    import userlm_local.text.prompt_format as chat
    from userlm_local.text.tokenizer import Tokenizer

    fmt = chat.ChatFormat(Tokenizer.from_dir(tiny_model))
    # windows (the default): every sample is scored, however long its conversation
    samples = [s for d in load_dialogues("heldout", limit=2) for s in flip(fmt, d, max_len=None)]
    assert report["n_samples"] == len(samples)
    assert report["n_tokens"] == sum(sum(t != IGNORE for t in s.labels) for s in samples)
    assert report["long"] == "window" and report["max_len"] == 384
    assert report["window"]["length"] == 384 and report["window"]["min_context"] == 192
    assert report["window"]["conversations_windowed"] >= 1 and "windows of max_len" in report["convention"]
    # --long truncate: the convention before windows, samples that lose their oldest exchanges
    assert main(["score", str(tiny_model), "--limit", "2", "--json", "--max-len", "384", "--long", "truncate"]) == 0
    old = json.loads(capsys.readouterr()[0])
    samples = [s for d in load_dialogues("heldout", limit=2) for s in flip(fmt, d, max_len=384)]
    assert old["n_samples"] == len(samples) and old["long"] == "truncate" and "window" not in old
    assert old["n_tokens"] == sum(sum(t != IGNORE for t in s.labels) for s in samples)
    assert "loses its oldest exchanges" in old["convention"]


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("userlm-local score: error: "), err
    return lines[0]


def test_score_bad_inputs(tiny_model, tmp_path, capsys):
    assert main(["score", str(tiny_model), "--data", "nope"]) == 2
    assert "unknown split" in one_error_line(capsys)
    assert main(["score", str(tmp_path / "missing")]) == 2
    assert "no such file" in one_error_line(capsys)
    assert main(["score", str(tiny_model), "--limit", "0"]) == 2
    one_error_line(capsys)
    assert main(["score", str(tiny_model), "--data-file", str(tmp_path / "none.json")]) == 2
    assert "no such data file" in one_error_line(capsys)
    one = tmp_path / "one.json"  # issue 29: a ValueError traceback from the diversity metric
    one.write_text('[{"id": "c1", "conversations": [{"from": "human", "value": "How do I bake bread?"}, '
                   '{"from": "gpt", "value": "Mix flour and water."}]}]')
    assert main(["score", str(tiny_model), "--data-file", str(one), "--max-len", "64", "--first-turns", "5"]) == 2
    assert "first-turn diversity needs at least two intents; the data gives 1" in one_error_line(capsys)
    # the prompted baseline samples first turns through the same check (it ran on one intent, diversity blank)
    assert main(["score", "--prompted", "tiny", "--data-file", str(one), "--paper-table", "--probes", "1"]) == 2
    assert "first-turn diversity needs at least two intents; the data gives 1" in one_error_line(capsys)
    deep = tmp_path / "deep.jsonl"  # issue 29: a RecursionError
    deep.write_text('{"q": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert main(["score", str(tiny_model), "--probes", "2", "--role-probes", str(deep), "--limit", "1"]) == 2
    assert "line 1: not JSON (nested too deeply)" in one_error_line(capsys)


def test_score_bad_lengths(tiny_model, capsys):
    """--max-len and window values that cannot work: one line, exit 2, before anything is scored."""
    from userlm_local.runtime.backends import inspect_model

    ctx = inspect_model(tiny_model).context_length
    assert main(["score", str(tiny_model), "--limit", "1", "--max-len", str(ctx + 1)]) == 2
    assert f"more than the model's context of {ctx} tokens" in one_error_line(capsys)
    assert main(["score", str(tiny_model), "--limit", "1", "--max-len", "512", "--window-context", "512"]) == 2
    assert "less than --max-len 512" in one_error_line(capsys)
    assert main(["score", str(tiny_model), "--limit", "1", "--window-context", "-1"]) == 2
    assert "at least 0" in one_error_line(capsys)
    assert main(["score", str(tiny_model), "--limit", "1", "--long", "truncate", "--window-context", "64"]) == 2
    assert "for --long window" in one_error_line(capsys)
    # a window that the intent and the context fill: smaller than a turn can need
    assert main(["score", str(tiny_model), "--limit", "1", "--max-len", "40", "--window-context", "20"]) == 2
    assert "no room for a target after the intent" in one_error_line(capsys)
    assert main(["score", str(tiny_model), "--limit", "1", "--max-len", "4"]) == 2
    assert "at least 8" in one_error_line(capsys)


def test_score_rejects_non_userlm(plain_model, capsys):
    assert main(["score", str(plain_model), "--limit", "1"]) == 2
    assert "endconversation" in one_error_line(capsys)


def test_single_pass_equals_one_pass_per_sample(torch_backend64):
    """The single pass gives the per-sample numbers (within 1e-4 relative on perplexity), and
    its kept rows are the distributions at the user-turn target positions.  On the float64 model:
    one long pass and several short ones then differ only by float32 rounding of the logits and
    log-probs (< 1e-5 at their scale), not by the CPU's float32 kernels for each shape."""
    from userlm_local.evaluation.scoring import score_conversation

    dialogues = load_dialogues("heldout", limit=2)
    for d in dialogues:
        one = score_conversation(torch_backend64, d, max_len=384, keep_rows=True)
        many = score_conversation(torch_backend64, d, max_len=384, one_pass=False)
        assert sum(one.passes.values()) < sum(many.passes.values())
        for cond in ("with_intent", "without_intent"):
            t1, n1 = one.totals(cond)
            t2, n2 = many.totals(cond)
            assert n1 == n2 and math.exp(-t1 / n1) == pytest.approx(math.exp(-t2 / n2), rel=1e-4)
        p1, e1 = one.termination()
        p2, e2 = many.termination()
        assert e1 == e2 and np.allclose(p1, p2, rtol=1e-3)
        samples = flip(torch_backend64.fmt, d, max_len=384)
        from userlm_local.evaluation.scoring import chains

        assert one.rows.shape[0] == sum(len({i for s in c for i, t in enumerate(s.labels) if t != IGNORE})
                                        for c in chains(samples))
        np.testing.assert_allclose(np.exp(one.rows).sum(axis=1), 1.0, rtol=1e-4)
        # the row of the last target token is the one a direct pass gives
        last = samples[-1]
        i = max(i for i, t in enumerate(last.labels) if t != IGNORE)
        direct = log_softmax(torch_backend64.logits(last.input_ids))[i - 1]
        np.testing.assert_allclose(one.rows[-1], direct, atol=1e-4)


def test_a_data_file_of_ones_own_is_scored_whole_and_a_cut_one_is_named(tmp_path, capsys):
    """--data-file defaults to all of it (the 90/5/5 split by id is for the packaged data), and a
    file cut in the middle of a record is read up to its last whole record, with a warning."""
    import json as _json

    from userlm_local.cli import main as cli

    convs = [{"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"How do I bake bread number {i}?"},
        {"from": "gpt", "value": "Mix flour, water, yeast and salt, then bake."},
        {"from": "human", "value": "Thanks, how long?"}, {"from": "gpt", "value": "About 30 minutes."}]}
        for i in range(6)]
    whole = tmp_path / "mine.json"
    whole.write_text(_json.dumps(convs))
    assert cli(["score", "tiny", "--data-file", str(whole), "--max-len", "256", "--json"]) == 0
    out, err = capsys.readouterr()
    report = _json.loads(out)
    assert report["data"] == "all" and report["n_conversations"] == 6 and "warning" not in err
    cut = tmp_path / "cut.json"
    text = whole.read_text()
    cut.write_text(text[: text.index('{"id": "c4"') + 20])
    assert cli(["score", "tiny", "--data-file", str(cut), "--max-len", "256", "--json"]) == 0
    out, err = capsys.readouterr()
    assert _json.loads(out)["n_conversations"] == 4
    assert "ends in the middle of a record" in err and "4 whole records" in err


def long_heldout(fmt, lo: int, hi: int, n: int):
    out = []
    for d in load_dialogues("heldout", limit=60):
        if lo < len(flip(fmt, d, max_len=None)[-1].input_ids) < hi:
            out.append(d)
        if len(out) == n:
            return out
    raise AssertionError("not enough held-out conversations of that length")


def test_windowed_scoring_is_one_pass_when_the_conversation_fits(torch_backend64):
    """A conversation that fits in --max-len: one pass per condition, the very numbers of the
    chain scoring (``long="truncate"``) and within float rounding of one pass per sample."""
    from userlm_local.evaluation.scoring import score_conversation

    for d in long_heldout(torch_backend64.fmt, 400, 1500, 2):
        w = score_conversation(torch_backend64, d, max_len=2048, long="window", keep_rows=True)
        t = score_conversation(torch_backend64, d, max_len=2048, long="truncate", keep_rows=True)
        many = score_conversation(torch_backend64, d, max_len=2048, long="truncate", one_pass=False)
        assert w.passes == t.passes == {"with_intent": 1, "without_intent": 1} and w.windowed == 0
        for cond in ("with_intent", "without_intent"):
            assert w.totals(cond) == t.totals(cond)
            t1, n1 = w.totals(cond)
            t2, n2 = many.totals(cond)
            assert n1 == n2 and t1 == pytest.approx(t2, rel=1e-5)
        assert w.termination() == t.termination()
        np.testing.assert_array_equal(w.rows, t.rows)


@pytest.fixture(scope="module")
def bundled64():
    """The bundled tiny UserLM (trained: how much context matters is only meaningful on a trained model), float64."""
    from userlm_local.defaults import tiny_user_model
    from userlm_local.runtime.backends.torch import load

    backend = load(tiny_user_model())
    backend.model.double()
    return backend


def test_windowed_scoring_stays_close_with_generous_overlap(bundled64):
    """Windows of 2/3 of a conversation, each target after at least half of it: every target and
    probe scored once, perplexity within 5% of the one full pass (the bundled tiny UserLM, a few
    dozen target tokens per conversation; these three: 0.01-1.0%)."""
    from userlm_local.evaluation.scoring import score_conversation

    for d in long_heldout(bundled64.fmt, 700, 1400, 3):
        n = len(flip(bundled64.fmt, d, max_len=None)[-1].input_ids)
        full = score_conversation(bundled64, d, max_len=2048, long="window")
        win = score_conversation(bundled64, d, max_len=2 * n // 3, long="window", context=n // 2)
        assert sum(win.passes.values()) > 2 and win.windowed == 2
        for cond in ("with_intent", "without_intent"):
            (t1, n1), (t2, n2) = full.totals(cond), win.totals(cond)
            assert n1 == n2 and math.exp(-t2 / n2) == pytest.approx(math.exp(-t1 / n1), rel=0.05)
        (p1, e1), (p2, e2) = full.termination(), win.termination()
        assert e1 == e2 and len(p1) == len(p2)


def test_each_window_is_the_intent_and_enough_of_the_conversation(torch_backend64):
    """``plan_windows``: every position scored once, in a pass of at most the window, after at least
    the context (or all) of the conversation, starting at a user turn where one gives that; and a
    windowed log-prob is the one a direct pass over intent + that stretch gives."""
    from userlm_local.evaluation.scoring import head_length, plan_windows, read_positions

    fmt = torch_backend64.fmt
    d = long_heldout(fmt, 700, 1400, 1)[0]
    samples = flip(fmt, d, max_len=None)
    ids = samples[-1].input_ids
    need = sorted({i for s in samples for i, t in enumerate(s.labels) if t != IGNORE})
    starts = [s.labels.index(next(t for t in s.labels if t != IGNORE)) - len(fmt.open_user()) for s in samples]
    head = head_length(fmt, d, True)
    assert ids[:head] == fmt.start() + fmt.message("system", d.intent) and head in starts
    window, context = len(ids) // 2, len(ids) // 4
    plan = plan_windows(need, head, starts, window, context)
    assert [i for _, covered in plan for i in covered] == need and len(plan) > 2
    for k, (s, covered) in enumerate(plan):
        assert head + covered[-1] - s <= window
        assert k == 0 and s == head or min(covered) - s >= context
    assert any(s in starts for s, _ in plan[1:])
    lp, _, _, passes, _, _ = read_positions(torch_backend64, ids, need, fmt.ids.end_conversation, head=head,
                                            starts=starts, window=window, context=context)
    assert passes == len(plan)
    s, covered = plan[-1]
    i = covered[len(covered) // 2]
    direct = log_softmax(torch_backend64.logits(ids[:head] + ids[s:i]))[-1, ids[i]]
    assert lp[need.index(i)] == pytest.approx(direct, abs=1e-5)
    with pytest.raises(Exception, match="no room for a target"):
        plan_windows(need, head, starts, head + 10, 10)
