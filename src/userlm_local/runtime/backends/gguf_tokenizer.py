"""The tokenizer stored inside a GGUF file, read through llama.cpp's vocab API.

It offers the interface of ``userlm_local.text.tokenizer.Tokenizer`` that the chat
format needs, so a GGUF runs without any Hugging Face file beside it.
"""

from __future__ import annotations

import ctypes
import functools
import re

from ...text.tokenizer import encode_template


class GGUFTokenizer:
    def __init__(self, llama_cpp, model, meta: dict[str, str]):
        self.ll = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.meta = meta
        self.chat_template = meta.get("tokenizer.chat_template")
        self.add_bos_token = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.bos_token = self._text(meta.get("tokenizer.ggml.bos_token_id"))
        self.eos_token = self._text(meta.get("tokenizer.ggml.eos_token_id"))

    @property
    def vocab(self):
        """llama.cpp's vocab, which lives inside the model: once the model is freed, a call with it
        would read freed memory (a segfault, as ``bench`` did with a GGUF REF), so it is refused."""
        if self._vocab is None:
            raise RuntimeError("this GGUF tokenizer's model was closed (keep a tokenizer from load_tokenizer)")
        return self._vocab

    def close(self) -> None:
        """The model is about to be freed: every later call raises instead of crashing."""
        self._vocab = None

    def _text(self, tid: str | None) -> str | None:
        return None if tid is None else self.piece(int(tid))

    @property
    def vocab_size(self) -> int:
        return self.ll.llama_vocab_n_tokens(self.vocab)

    def _tokenize(self, text: str, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self.ll.llama_token * n_max)()
        n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, parse_special)
        if n < 0:
            buf = (self.ll.llama_token * -n)()
            n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, -n, False, parse_special)
        return list(buf[:n])

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text (no BOS; control-token text is not parsed)."""
        return self._split_tokenize(text, parse_special=False)

    def encode_with_special(self, text: str) -> list[int]:
        return self._split_tokenize(text, parse_special=True)

    def encode_template(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """As ``Tokenizer.encode_template``: special-token strings inside ``spans`` (a client's
        text) are text, outside them the tokens."""
        specials = self._specials
        return encode_template(text, spans, None if specials is None else specials[True], self.encode,
                               self.encode_with_special)

    @functools.cached_property
    def _specials(self):
        """The token strings llama.cpp cuts a text at before its tokenizer runs (control,
        user-defined and unknown tokens), as one regex per mode, longest first as llama.cpp tries
        them; None where its cut does more than split (a token that strips the spaces beside it,
        or an SPM vocabulary's space before a fragment), so only its own code gets it right."""
        ll = self.ll
        if ll.llama_vocab_type(self.vocab) != ll.LLAMA_VOCAB_TYPE_BPE:
            return None
        kinds = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_USER_DEFINED | ll.LLAMA_TOKEN_ATTR_UNKNOWN
        strip = ll.LLAMA_TOKEN_ATTR_LSTRIP | ll.LLAMA_TOKEN_ATTR_RSTRIP
        every, user = {}, {}
        for tid in range(self.vocab_size):
            attr = ll.llama_vocab_get_attr(self.vocab, tid)
            if not attr & kinds:
                continue
            if attr & strip:
                return None
            text = (ll.llama_vocab_get_text(self.vocab, tid) or b"").decode("utf-8", errors="replace")  # what it cuts at
            if not text:
                continue
            every.setdefault(text, tid)
            if attr & ll.LLAMA_TOKEN_ATTR_USER_DEFINED:
                user.setdefault(text, tid)

        def pattern(table):
            if not table:
                return None
            return re.compile("|".join(re.escape(t) for t in sorted(table, key=len, reverse=True)))

        return {True: (pattern(every), every), False: (pattern(user), user)}

    def _split_tokenize(self, text: str, parse_special: bool) -> list[int]:
        """llama.cpp's tokenization, in time linear in the text: its own cut at special-token
        strings compares every fragment with every special string and re-cuts, quadratic in their
        number ('<|im_start|>x' x 20,000 took 6.6 s, x 80,000 107 s); here one regex pass cuts, and
        llama.cpp tokenizes each piece between cuts, where nothing is left for it to cut."""
        specials = self._specials
        if specials is None or len(text) < 256:
            return self._tokenize(text, parse_special)
        regex, table = specials[parse_special]
        if regex is None:
            return self._tokenize(text, parse_special)
        out, at = [], 0
        for m in regex.finditer(text):
            if m.start() > at:
                out += self._tokenize(text[at:m.start()], parse_special=False)
            out.append(table[m.group()])
            at = m.end()
        if at < len(text):
            out += self._tokenize(text[at:], parse_special=False)
        return out

    @functools.lru_cache(maxsize=None)
    def piece_bytes(self, tid: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.ll.llama_token_to_piece(self.vocab, tid, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.ll.llama_token_to_piece(self.vocab, tid, buf, -n, 0, True)
        return buf.raw[:n]

    def piece(self, tid: int) -> str:
        return self.piece_bytes(tid).decode("utf-8", errors="replace")

    def decode(self, ids, skip_special: bool = False) -> str:
        parts = (self.piece_bytes(int(t)) for t in ids if not (skip_special and self.is_special(int(t))))
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_id(self, name: str) -> int | None:
        ids = self._tokenize(name, parse_special=True)
        if len(ids) == 1 and self.piece(ids[0]) == name:
            return ids[0]
        return None

    def is_special(self, tid: int) -> bool:
        return bool(self.ll.llama_vocab_is_control(self.vocab, tid))
