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
    assert "scoring" in err  # the progress bar goes to stderr
    import userlm_local.text.prompt_format as chat
    from userlm_local.text.tokenizer import Tokenizer

    fmt = chat.ChatFormat(Tokenizer.from_dir(tiny_model))
    samples = [s for d in load_dialogues("heldout", limit=2) for s in flip(fmt, d, max_len=384)]
    assert report["n_samples"] == len(samples)
    assert report["n_tokens"] == sum(sum(t != IGNORE for t in s.labels) for s in samples)


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
