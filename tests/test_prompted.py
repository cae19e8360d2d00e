"""The paper's prompted-user baseline: its prompt, and its scoring of real user turns."""

import math

from userlm_local.data import Dialogue
from userlm_local.evaluation.prompted import score_prompted
from userlm_local.simulation.prompted import END_TEXT, PromptedUser, user_prompt

INTENT = "You are a user chatting with an assistant language model to plan a hike."
D = Dialogue("h", [{"role": "user", "content": "help me plan a hike"}, {"role": "assistant", "content": "Where?"},
                   {"role": "user", "content": "near the lake"}, {"role": "assistant", "content": "Try the north trail."}],
             INTENT)


def test_prompt_strips_the_intent_prefix_and_shows_the_history():
    first = user_prompt(INTENT, [])
    assert "interacting with an AI system to plan a hike." in first and "chatting with" not in first
    assert first.endswith("Generate the first prompt you would say to the system to achieve your goal.")
    later = user_prompt(INTENT, D.messages[:2])
    assert "<user>: help me plan a hike\n<assistant>: Where?" in later and END_TEXT in later


def test_score_prompted_matches_a_direct_computation():
    from userlm_local.assistants.local import LocalAssistant
    from userlm_local.defaults import tiny_assistant_model

    a = LocalAssistant.load(str(tiny_assistant_model()), temperature=1.0, top_p=0.8, max_tokens=8)
    tok, eot = a.backend.tokenizer, a.backend.tokenizer.token_id("<|eot_id|>")
    report = score_prompted(a, [D], progress=False)
    nll = n = 0
    for i in (0, 2):
        prompt = a.prompt_ids([{"role": "user", "content": user_prompt(INTENT, D.messages[:i])}])
        target = tok.encode(D.messages[i]["content"]) + [eot]
        nll -= float(sum(a.backend.score(prompt + target, len(prompt))))
        n += len(target)
    assert report["n_tokens"] == n
    assert math.isclose(report["ppl_real_user_turns"], math.exp(nll / n), rel_tol=1e-4)
    # probes after each assistant turn: one where the user went on, one at the true end
    assert report["termination_auc"] in (0.0, 1.0) and report["skipped_over_context"] == 0
    text, ended = PromptedUser(a).next_turn(INTENT, [], key="k")
    assert isinstance(text, str) and isinstance(ended, bool)
