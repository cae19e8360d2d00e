"""A run's data: the ShareGPT splits, the run's tokenizer, and the training windows."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from ..data import Dialogue, load_dialogues, split_counts
from ..text.prompt_format import END_HEADER, EOT, START_HEADER, USERLM_TEMPLATE, ChatFormat
from ..text.tokenizer import Tokenizer
from ..util.errors import UserError
from .assistant import ASSISTANT_TEMPLATE, AssistantFormat
from .base import base_kind, base_tokenizer
from .bpe import add_end_conversation, save_tokenizer, train_bpe
from .spec import RunSpec
from .windows import Window, assistant_seqs, to_windows, user_seqs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


TOKENIZER_CHARS = 40_000_000  # text the BPE trainer sees at most


def load_split(spec: RunSpec, split: str, limit: int | None):
    try:
        dialogues = load_dialogues(split, limit=limit, path=spec.data)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the {split} dialogues ({exc})") from None
    if not dialogues:
        raise UserError(f"the {split} split is empty")
    return dialogues


def check_data(spec: RunSpec) -> None:
    """The data file exists, parses, and has the splits the run reads: checked before the run's
    directory is touched (the file is processed once into the data cache, which later reads reuse)."""

    try:
        counts = split_counts(spec.data)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the dialogues ({exc})") from None
    where = spec.data or "the packaged ShareGPT file"
    why = "conversations are split 90/5/5 by id into train, validation and test"
    if not counts.get("train"):
        raise UserError(f"the train split of {where} is empty ({why}); train needs a file with more conversations")
    if spec.val_dialogues and not counts.get("validation"):
        raise UserError(f"the validation split of {where} is empty ({why}); --val-dialogues 0 trains "
                        "without validation")


def shuffled(dialogues: list, seed: int) -> list:
    out = list(dialogues)
    random.Random(seed).shuffle(out)
    return out


def tokenizer_texts(dialogues, max_chars: int = TOKENIZER_CHARS):
    n = 0
    for d in dialogues:
        for text in [d.intent, *(m["content"] for m in d.messages)]:
            if text:
                yield text
                n += len(text)
        if n >= max_chars:
            return


class Formats:
    """The run's tokenizer and the renderer of its direction."""

    def __init__(self, tok_dir: Path, direction: str):
        self.tokenizer = Tokenizer.from_dir(tok_dir)
        self.direction = direction
        if direction == "user":
            self.fmt = ChatFormat(self.tokenizer)
        else:
            self.fmt = AssistantFormat(self.tokenizer)
        self.pad_id = self.tokenizer.token_id("<|eot_id|>")

    def capped(self, dialogue, cap: int, tail: int = 0):
        """The dialogue with each assistant reply longer than ``cap + tail`` tokens cut to its first
        ``cap`` tokens, " ...", and (with ``tail``) " " and its last ``tail`` tokens: the tail is how
        an answer ends, the cue of a finished reply that the user's end decision reads."""

        msgs = []
        for m in dialogue.messages:
            if m["role"] == "assistant":
                ids = self.tokenizer.encode(m["content"])
                if len(ids) > cap + tail:
                    text = self.tokenizer.decode(ids[:cap]).rstrip() + " ..."
                    if tail:
                        text += " " + self.tokenizer.decode(ids[-tail:]).lstrip()
                    m = {"role": "assistant", "content": text}
            msgs.append(m)
        return Dialogue(dialogue.id, msgs, dialogue.intent)

    def seqs(self, dialogue, with_intent: bool):
        if self.direction == "user":
            return user_seqs(self.fmt, dialogue, with_intent=with_intent)
        return assistant_seqs(self.fmt, dialogue)


def build_windows(fm: Formats, dialogues, spec: RunSpec, token_goal: int | None) -> tuple[list[Window], int]:
    """Windows of the dialogues in order, stopping once ``token_goal`` tokens are collected."""
    out: list[Window] = []
    total = used = 0
    for d in dialogues:
        if spec.assistant_cap:
            d = fm.capped(d, spec.assistant_cap, spec.assistant_tail)
        wins = to_windows(fm.seqs(d, spec.with_intent), spec.context)
        if spec.windows_per_dialogue and len(wins) > spec.windows_per_dialogue:
            keep = spec.windows_per_dialogue
            wins = wins[:(keep + 1) // 2] + wins[len(wins) - keep // 2:]
        used += 1
        out += wins
        total += sum(len(w) for w in wins)
        if token_goal is not None and total >= token_goal:
            break
    return out, used


def make_tokenizer(spec: RunSpec, dest: Path, train_dialogues) -> None:
    """Write the run's tokenizer (BPE trained here, or --tokenizer, or the --base one) to ``dest``."""
    from tokenizers import AddedToken, Tokenizer

    if spec.base and base_kind(spec.base) == "gguf":
        tok = base_tokenizer(spec.base)
        missing = [t for t in (START_HEADER, END_HEADER, EOT) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    elif spec.base or spec.tokenizer:
        src = Path(spec.base or spec.tokenizer)
        if not (src / "tokenizer.json").is_file():
            raise UserError(f"{src}: no tokenizer.json (a fast tokenizer file is required)")
        try:
            tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        except Exception as exc:
            raise UserError(f"{src}/tokenizer.json: not a readable tokenizer ({exc})") from None
        missing = [t for t in (START_HEADER, END_HEADER, EOT) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    else:
        log(f"training a byte-level BPE tokenizer ({spec.vocab} tokens) on the training split")
        # one id is kept for <|endconversation|>, so user and assistant models share every other id
        tok = train_bpe(tokenizer_texts(train_dialogues), spec.vocab - 1)
    if spec.direction == "user":
        add_end_conversation(tok)
    save_tokenizer(tok, dest, chat_template=USERLM_TEMPLATE if spec.direction == "user" else ASSISTANT_TEMPLATE)
