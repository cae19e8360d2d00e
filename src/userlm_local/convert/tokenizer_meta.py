"""Tokenizer metadata for a GGUF file, read from ``tokenizer.json`` and the configs.

What llama.cpp needs for a Llama-3-style byte-level BPE tokenizer:

* ``tokenizer.ggml.model = "gpt2"`` and the pre-tokenizer name.  The name is chosen from
  the *split regex* in ``tokenizer.json`` (``llama-bpe`` for Llama-3's), not from a hash of
  encoded text, so a tokenizer with extra added tokens is still recognised.
* the token strings (padded with ``[PAD{i}]`` up to the model's ``vocab_size``), their
  types and the merges.  Types: base vocabulary ``NORMAL``; added tokens marked special
  ``CONTROL``; added tokens *not* marked special ``USER_DEFINED``.  ``<|endconversation|>``
  (``special: false``) is therefore ``USER_DEFINED``: llama.cpp then matches its text even
  with ``parse_special=False`` and renders it when decoding, which is exactly what the HF
  tokenizer does.  (llama.cpp's own converter would make it ``CONTROL`` because its text
  looks like ``<|...|>``.)
* special ids: BOS, EOS and EOT.  UserLM-8b's ``config.json`` says EOS 128001 while its
  ``generation_config.json`` and tokenizer say 128009 (``<|eot_id|>``); the end of a user
  turn is ``<|eot_id|>``, so EOS is read from ``generation_config.json`` first, then
  ``tokenizer_config.json``, and ``config.json`` only as the last resort.
* ``add_bos_token = false`` (the UserLM template has no BOS) and the chat template verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..text.prompt_format import ChatFormat
from ..util.errors import UserError
from ..text.tokenizer import Tokenizer, read_json

# token types, as gguf.TokenType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of the byte-level BPE pre-tokenizers we know -> llama.cpp pre-tokenizer name.
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
KNOWN_PRE = {LLAMA3_REGEX: "llama-bpe"}


@dataclass
class TokenizerMeta:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int
    eot_id: int
    chat_template: str | None
    add_bos_token: bool = False
    facts: dict = field(default_factory=dict)  # for the manifest
    tokenizer_size: int = 0

    @property
    def model(self) -> str:
        return "gpt2"


def split_regex(pre_tokenizer: dict | None) -> str | None:
    """The Split regex of a (Sequence of) pre-tokenizer(s), or None."""
    if not isinstance(pre_tokenizer, dict):
        return None
    if pre_tokenizer.get("type") == "Sequence":
        for p in pre_tokenizer.get("pretokenizers", []):
            found = split_regex(p)
            if found is not None:
                return found
        return None
    if pre_tokenizer.get("type") == "Split":
        pattern = pre_tokenizer.get("pattern") or {}
        return pattern.get("Regex")
    return None


def is_smollm_pre(pre: dict | None) -> bool:
    """SmolLM2's split: single digits, then GPT-2's byte-level regex (llama.cpp's 'smollm')."""
    if not isinstance(pre, dict) or pre.get("type") != "Sequence":
        return False
    parts = pre.get("pretokenizers") or []
    return (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") is True
            and parts[1].get("type") == "ByteLevel" and parts[1].get("use_regex", True) is True
            and not parts[1].get("add_prefix_space", False))


def detect_pre(tok_json: dict, path: Path) -> str:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{path}: tokenizer model is {model.get('type')!r}; only byte-level BPE "
                        "(Llama-3 style) tokenizers can be converted")
    decoder = tok_json.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise UserError(f"{path}: tokenizer decoder is {decoder.get('type')!r}, not ByteLevel")
    if tok_json.get("normalizer") not in (None, {}):
        raise UserError(f"{path}: tokenizer has a normalizer, which llama.cpp's gpt2 tokenizer does not apply")
    if is_smollm_pre(tok_json.get("pre_tokenizer")):
        return "smollm"
    regex = split_regex(tok_json.get("pre_tokenizer"))
    if regex not in KNOWN_PRE:
        shown = (regex[:60] + "...") if regex else "none"
        raise UserError(f"{path}: unrecognised pre-tokenizer split regex ({shown}); only Llama-3's "
                        "(llama.cpp 'llama-bpe') and SmolLM2's ('smollm') are supported, because llama.cpp "
                        "would split text differently")
    return KNOWN_PRE[regex]


def _first_id(value) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return int(value) if isinstance(value, int) else None


def read_tokenizer_meta(src: Path, vocab_size: int, *, require_userlm: bool = True) -> TokenizerMeta:
    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise UserError(f"{src}: no tokenizer.json (the fast tokenizer file is required to convert)")
    tok_json = read_json(tok_path)
    if not isinstance(tok_json, dict):
        raise UserError(f"{tok_path}: not a tokenizer file")
    pre = detect_pre(tok_json, tok_path)
    tokenizer = Tokenizer.from_dir(src)
    fmt = ChatFormat(tokenizer, require_userlm=require_userlm)
    ids = fmt.ids

    model = tok_json["model"]
    vocab: dict[str, int] = model.get("vocab") or {}
    added = tok_json.get("added_tokens") or []
    size = max([*vocab.values(), *(int(a["id"]) for a in added), -1]) + 1
    if size > vocab_size:
        raise UserError(f"{src}: the tokenizer has {size} tokens but config.json vocab_size is {vocab_size}")
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for a in added:
        i = int(a["id"])
        tokens[i] = a["content"]
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        else:
            a, b = m
            if " " in a or " " in b:
                raise UserError(f"{tok_path}: merge {m!r} contains a space and cannot be stored in GGUF")
            merges.append(f"{a} {b}")
    if not merges:
        raise UserError(f"{tok_path}: the BPE model has no merges")

    config = read_json(src / "config.json")
    gen = read_json(src / "generation_config.json", missing_ok=True) or {}
    tok_cfg = read_json(src / "tokenizer_config.json", missing_ok=True) or {}
    eos_sources = {
        "generation_config": _first_id(gen.get("eos_token_id")),
        "tokenizer_config": tokenizer.token_id(tokenizer.eos_token) if tokenizer.eos_token else None,
        "config": _first_id(config.get("eos_token_id")),
    }
    eos = next((v for v in eos_sources.values() if v is not None), ids.eot)
    bos = next((v for v in (tokenizer.token_id(tokenizer.bos_token) if tokenizer.bos_token else None,
                            _first_id(gen.get("bos_token_id")), _first_id(config.get("bos_token_id")),
                            ids.bos) if v is not None), None)
    template = tokenizer.chat_template
    facts = {
        "model": "gpt2",
        "pre": pre,
        "size": size,
        "vocab_size": vocab_size,
        "bos": bos,
        "eos": eos,
        "eos_sources": eos_sources,
        "eot": ids.eot,
        "end_of_text": ids.end_of_text,
        "end_conversation": ids.end_conversation,
        "start_header": ids.start_header,
        "end_header": ids.end_header,
        "newline": ids.newline,
        "stop_ids": sorted(ids.stop_ids),
        "add_bos_token": False,
        "add_bos_token_in_checkpoint": bool(tok_cfg.get("add_bos_token", False)),
        "user_defined_tokens": [tokens[i] for i in range(vocab_size) if types[i] == USER_DEFINED],
    }
    if len({v for v in eos_sources.values() if v is not None}) > 1:
        facts["eos_note"] = ("EOS ids disagree across the checkpoint's configs ("
                             + ", ".join(f"{k}={v}" for k, v in eos_sources.items()) + f"); GGUF eos = {eos}")
    return TokenizerMeta(
        tokens=tokens, token_types=types, merges=merges, pre=pre, bos_id=bos, eos_id=eos,
        eot_id=ids.eot, chat_template=template, add_bos_token=False, facts=facts, tokenizer_size=size,
    )
