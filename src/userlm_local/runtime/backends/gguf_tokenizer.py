"""The tokenizer stored inside a GGUF file, read through llama.cpp's vocab API.

It offers the interface of ``userlm_local.text.tokenizer.Tokenizer`` that the chat
format needs, so a GGUF runs without any Hugging Face file beside it.
"""

from __future__ import annotations

import ctypes
import functools


class GGUFTokenizer:
    def __init__(self, llama_cpp, model, meta: dict[str, str]):
        self.ll = llama_cpp
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.meta = meta
        self.chat_template = meta.get("tokenizer.chat_template")
        self.add_bos_token = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.bos_token = self._text(meta.get("tokenizer.ggml.bos_token_id"))
        self.eos_token = self._text(meta.get("tokenizer.ggml.eos_token_id"))

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
        return self._tokenize(text, parse_special=False)

    def encode_with_special(self, text: str) -> list[int]:
        return self._tokenize(text, parse_special=True)

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
