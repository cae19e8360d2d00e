"""Scoring the prompted-assistant baseline (``simulation.prompted``) on real conversations: the
perplexity of the real user turns and P(end) under the prompted-simulator prompt, comparable with
``evaluation.scoring`` for a UserLM."""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

from ..simulation.prompted import END_TEXT, user_prompt
from ..util.errors import UserError
from .metrics import best_f1, roc_auc


def score_prompted(assistant, dialogues, *, progress: bool = True) -> dict:
    """Perplexity of the real user turns and P(end) under the prompted-simulator prompt."""
    backend, tok = assistant.backend, assistant.backend.tokenizer
    # the template's end of a turn: the first stop token the model has, in LocalAssistant's order
    stop = next((t for t in (tok.token_id(n) for n in ("<|im_end|>", "<|eot_id|>", "</s>")) if t is not None),
                tok.token_id(tok.eos_token) if tok.eos_token else None)
    end_ids = tok.encode(END_TEXT)
    nll = n_tok = 0.0
    skipped = 0
    p_end, is_end = [], []
    for d in tqdm(dialogues, desc="prompted", unit="conv", file=sys.stderr, disable=not progress):
        msgs = d.messages
        for i, m in enumerate(msgs):
            if m["role"] != "user" and i != len(msgs) - 1:
                continue
            history = msgs[:i] if m["role"] == "user" else msgs
            prompt = assistant.prompt_ids([{"role": "user", "content": user_prompt(d.intent, history)}])
            try:
                if m["role"] == "user":  # one pass: the real turn, and P(first token of the end string)
                    target = tok.encode(m["content"]) + ([stop] if stop is not None else [])
                    lp, lp_end = backend.score(prompt + target, len(prompt), extra=end_ids[0])
                    nll -= float(sum(lp))
                    n_tok += len(target)
                    p_first = math.exp(float(lp_end[0]))
                else:  # the conversation's end: the model should stop here
                    p_first = math.exp(float(backend.score(prompt + end_ids[:1], len(prompt))[0]))
            except UserError:  # longer than the model's context
                skipped += 1
                continue
            if history:  # a turn boundary after an assistant turn: would the model stop here?
                p_end.append(p_first)
                is_end.append(m["role"] != "user")
    f1, threshold = best_f1(p_end, is_end)
    ends = [p for p, e in zip(p_end, is_end) if e]
    others = [p for p, e in zip(p_end, is_end) if not e]
    return {
        "ppl_real_user_turns": math.exp(nll / max(n_tok, 1)), "n_tokens": int(n_tok),
        "skipped_over_context": skipped,
        "termination_auc": roc_auc(p_end, is_end) if ends and others else None,
        "termination_f1": f1, "termination_f1_threshold": threshold,
        "p_end_mean_at_end": sum(ends) / len(ends) if ends else None,
        "p_end_mean_elsewhere": sum(others) / len(others) if others else None,
        "convention": ("target: the real user turn's tokens + the template's end-of-turn token, after the "
                       "prompt rendered as one user message in the model's own chat template; P(end) = "
                       "P(the reply's first token is the first token of the text <|endconversation|>)"),
    }
