"""The paper's baseline: an assistant LM *prompted* to play the user.

The prompt is the one of the paper's Figure 9 (as reproduced by re-implementations): the
intent without its fixed prefix, some realism instructions, the conversation so far between
``====`` rules, and ``<|endconversation|>`` as the way to stop.  The model gets it as one user
message in its *own* chat template (``LocalAssistant``), and its reply is the user's turn.

``score_prompted`` teacher-forces the real user turns of held-out conversations under that
prompt (the prompted model's perplexity of real users) and scores P(end) as the probability of
the first token of the text ``<|endconversation|>`` (a plain string for it) as the reply's
first token: the model can only stop by starting its reply that way.
"""

from __future__ import annotations

import math
import sys

from ..data.intents import strip_prefix

END_TEXT = "<|endconversation|>"

_HEAD = (
    "You are a human user interacting with an AI system to {intent}\n"
    "Users can make typos, they don't always use perfect punctuation, and they tend to be lazy because typing "
    "requires effort.\n"
    "You have to also split information across turns and not give everything at the start.\n"
    "However, you should not make overdo these things in your outputs, you must realistically act like a human.\n"
)
_FIRST = "Generate the first prompt you would say to the system to achieve your goal."
_LATER = (
    "Here is your conversation so far with the AI system:\n"
    "====================================================\n"
    "{history}\n"
    "====================================================\n"
    "If your goal of your conversation is answered by this response, respond ONLY with \"<|endconversation|>\"\n"
    "If not, generate the next prompt you would say to the system to achieve your goal."
)


def user_prompt(intent: str, history: list[dict]) -> str:
    """The prompted-simulator instruction for the next user turn after ``history``."""
    goal = strip_prefix(intent).rstrip(".") + "."
    head = _HEAD.format(intent=goal)
    if not history:
        return head + _FIRST
    lines = "\n".join(f"<{m['role']}>: {m['content']}" for m in history)
    return head + _LATER.format(history=lines)


class PromptedUser:
    """A chat model playing the user through ``user_prompt`` (generation through ``assistant``,
    a ``LocalAssistant`` that renders the model's own chat template)."""

    def __init__(self, assistant):
        self.assistant = assistant

    def next_turn(self, intent: str, history: list[dict], key: object = None) -> tuple[str, bool]:
        """(text, ended): ended when the reply is, or contains, the end string, or is empty."""
        text = self.assistant.reply([{"role": "user", "content": user_prompt(intent, history)}], key=key)
        if END_TEXT in text or not text.strip():
            return text.replace(END_TEXT, "").strip(), True
        return text.strip(), False


def score_prompted(assistant, dialogues, *, progress: bool = True) -> dict:
    """Perplexity of the real user turns and P(end) under the prompted-simulator prompt."""
    from tqdm import tqdm

    from ..metrics import best_f1, roc_auc

    backend, tok = assistant.backend, assistant.backend.tokenizer
    # the template's end of a turn: the first stop token the model has, in LocalAssistant's order
    stop = next((t for t in (tok.token_id(n) for n in ("<|im_end|>", "<|eot_id|>", "</s>")) if t is not None),
                tok.token_id(tok.eos_token) if tok.eos_token else None)
    end_ids = tok.encode(END_TEXT)
    from ..util.errors import UserError

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
