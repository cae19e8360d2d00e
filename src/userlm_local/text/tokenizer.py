"""Tokenizer facts read from a model directory (``tokenizer.json`` + config).

Only the ``tokenizers`` library is needed: no torch, no transformers.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..util import jsonio
from ..util.errors import UserError


@dataclass
class Tokenizer:
    """A fast tokenizer plus the facts the UserLM runtime needs from its config."""

    inner: "object"  # tokenizers.Tokenizer
    plain: "object"  # the same tokenizer with special-token text encoded as text
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool
    chat_template: str | None

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Load (once per process and file version) the tokenizer of a model directory."""
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise UserError(f"{path}: no tokenizer.json (a fast tokenizer file is required)")
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                      for p in (tok_file, path / "tokenizer_config.json", path / "chat_template.jinja"))
        return _load(str(path.resolve()), stamp)

    @classmethod
    def _read(cls, path: Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        tok_file = path / "tokenizer.json"
        try:
            inner = HFTokenizer.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise UserError(f"{tok_file}: not a readable tokenizer file ({exc})") from None
        config = read_json(path / "tokenizer_config.json", missing_ok=True) or {}
        template = None
        jinja = path / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        plain = HFTokenizer.from_str(inner.to_str())
        plain.encode_special_tokens = True
        return cls(
            inner=inner,
            plain=plain,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            add_bos_token=bool(config.get("add_bos_token", False)),
            chat_template=template,
        )

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text: no BOS, and special-token text is not parsed."""
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode_with_special(self, text: str) -> list[int]:
        """Ids of rendered template text, where special-token text *is* the special token (no BOS added)."""
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_template(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """Ids of rendered template text in which ``spans`` are a client's text: special-token
        strings are the special tokens outside them and text inside them (so a message cannot
        spell a role marker); the ids of ``encode_with_special`` where no span spells one."""
        return encode_template(text, spans, self._special_cut, self.encode, self.encode_with_special)

    @functools.cached_property
    def _special_cut(self):
        """(regex, ids) of the special tokens' strings, longest first; None where a special token
        also strips the spaces beside it (then text and template are tokenized apart)."""
        added = self.inner.get_added_tokens_decoder()
        table = {}
        for tid, t in added.items():
            if t.special and t.content:
                if t.lstrip or t.rstrip or t.single_word:
                    return None
                table.setdefault(t.content, tid)
        return special_regex(table)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, name: str) -> int | None:
        """Id of a single token given by its text, or None when the vocabulary lacks it."""
        return self.inner.token_to_id(name)

    def is_special(self, token_id: int) -> bool:
        decoder = self.inner.get_added_tokens_decoder()
        added = decoder.get(token_id)
        return bool(added is not None and added.special)


def special_regex(table: dict[str, int]):
    """(one regex matching any of ``table``'s strings, longest first, ``table``), or None if empty."""
    if not table:
        return re.compile(r"(?!x)x"), table
    return re.compile("|".join(re.escape(t) for t in sorted(table, key=len, reverse=True))), table


def encode_template(text: str, spans: list[tuple[int, int]], cut, encode, encode_with_special) -> list[int]:
    """``text`` cut at special-token strings (``cut``: regex and ids) outside ``spans`` only, every
    piece between cuts tokenized as plain text (``encode``): the tokenizer's own cut, minus the
    special strings a client wrote.  Without ``cut``, template text and spans are tokenized apart."""
    spans = sorted(spans)
    if cut is None:
        out, at = [], 0
        for a, b in spans:
            out += encode_with_special(text[at:a]) if a > at else []
            out += encode(text[a:b])
            at = b
        return out + (encode_with_special(text[at:]) if at < len(text) else [])
    starts = [a for a, _ in spans]
    regex, table = cut

    def inside(a: int, b: int) -> bool:
        k = bisect.bisect_right(starts, b - 1) - 1  # the last span starting before the match ends
        return k >= 0 and spans[k][1] > a

    out, at = [], 0
    for m in regex.finditer(text):
        if inside(m.start(), m.end()):
            continue
        if m.start() > at:
            out += encode(text[at:m.start()])
        out.append(table[m.group()])
        at = m.end()
    if at < len(text):
        out += encode(text[at:])
    return out


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple) -> Tokenizer:
    return Tokenizer._read(Path(path))


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # older configs store AddedToken dicts
        return value.get("content")
    return value


# The largest JSON file of a model directory we read: tokenizer.json of a 256k vocabulary is ~35 MB;
# a config is a few KB.  Without a bound a hostile 10 GB config.json would be read whole.
MAX_JSON_BYTES = 256 * 2**20


def read_json(path: Path, missing_ok: bool = False):
    """Read a JSON file, turning every failure into a one-line UserError (too large, too deeply
    nested for the parser's recursion, not JSON)."""
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"{path}: file not found")
    try:
        return jsonio.load_file(path, MAX_JSON_BYTES, "a model's JSON file")
    except (OSError, ValueError) as exc:  # (not UTF-8, not JSON, too deep, an integer of over 4,300 digits)
        raise UserError(f"{path}: not valid JSON ({exc})") from None
