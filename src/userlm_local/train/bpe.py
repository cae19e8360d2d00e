"""Train a byte-level BPE tokenizer with Llama-3's pre-tokenizer and special tokens.

The result has the Llama-3 special tokens by name (ids 0-4, ``special``), so the
UserLM prompt format (``prompt_format.py``) works unchanged; a user model adds
``<|endconversation|>`` as an added *non-special* token after the BPE vocabulary,
exactly as UserLM-8b does, so every other id is shared with the assistant model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ..text.prompt_format import BOS, END_CONVERSATION, END_HEADER, END_OF_TEXT, EOT, START_HEADER

SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT]

# Llama-3's split regex (tokenizer.json of Llama-3.x: pre_tokenizer.pretokenizers[0]).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              show_progress: bool = False):
    """A fresh ``tokenizers.Tokenizer`` of ``vocab_size`` tokens (special tokens included)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))  # as Llama-3's tokenizer.json
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    return tok


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t


def add_end_conversation(tok) -> int:
    """Add ``<|endconversation|>`` as a non-special token (no-op when present); return its id."""
    from tokenizers import AddedToken

    tid = tok.token_to_id(END_CONVERSATION)
    if tid is None:
        tok.add_tokens([AddedToken(END_CONVERSATION, special=False, normalized=False)])
        tid = tok.token_to_id(END_CONVERSATION)
    return tid


def tokenizer_config(tok, *, chat_template: str | None = None) -> dict:
    """``tokenizer_config.json`` for a Llama-3-style tokenizer: bos/eos ``<|eot_id|>``, no BOS added."""
    decoder = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                 "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    config = {
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": EOT,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return config


def save_tokenizer(tok, dest: str | Path, *, chat_template: str | None) -> None:
    """Write tokenizer.json, tokenizer_config.json and (when given) chat_template.jinja."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")
    if chat_template is not None:
        (dest / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
