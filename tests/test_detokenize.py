"""The server's incremental detokenizer: the same text as one whole decode, in bounded work per
token, on the real tokenizers (Llama-3.1 with <|endconversation|>, SmolLM2's, and llama.cpp's
reading of a GGUF)."""

import random

import pytest

from userlm_local.text.detokenize import IncrementalDecoder

TEXTS = [
    "Hello there! Could you help me write a short poem about autumn leaves?",
    "Ça coûte 12,50 € — naïve façade, smörgåsbord, Straße.",
    "日本語のテキストと中文混合，还有한국어도 있어요。",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷🇯🇵 in one line",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n\n\tindented\t\ttabs   spaces",
    "  leading spaces, trailing spaces   ",
]


class Counting:
    """A tokenizer that counts the ids it is asked to decode."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids, skip_special=False):
        self.decoded += len(ids)
        return self.tok.decode(ids, skip_special=skip_special)


def check(tok, ids, skip_special=True):
    counting = Counting(tok)
    d = IncrementalDecoder(counting, skip_special=skip_special)
    pieces = [d.push(t) for t in ids]
    pieces.append(d.flush())
    whole = tok.decode(ids, skip_special=skip_special)
    assert "".join(pieces) == d.text == whole
    for p in pieces[:-1]:
        assert not p.endswith("\ufffd") or "\ufffd" in whole
    # bounded work: each push decodes two short windows, never the whole reply again
    assert counting.decoded <= 12 * len(ids) + 8, (counting.decoded, len(ids))


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dir, gguf_files):
    from userlm_local.runtime.backends import load_backend
    from userlm_local.defaults.model import BUNDLE
    from userlm_local.text.tokenizer import Tokenizer

    gguf = load_backend(gguf_files["f16"])
    try:
        yield {"llama31": Tokenizer.from_dir(tokenizer_dir),
               "smollm2": Tokenizer.from_dir(BUNDLE),
               "gguf": gguf.tokenizer}
    finally:
        gguf.close()


@pytest.mark.parametrize("name", ["llama31", "smollm2", "gguf"])
def test_same_text_as_whole_decode(tokenizers, name):
    tok = tokenizers[name]
    for text in TEXTS:
        check(tok, tok.encode(text))
    check(tok, tok.encode("\n".join(TEXTS) * 20))  # a long reply


@pytest.mark.parametrize("name", ["llama31", "smollm2", "gguf"])
def test_random_ids_with_specials_and_broken_bytes(tokenizers, name):
    tok = tokenizers[name]
    rng = random.Random(0)
    for _ in range(30):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 60))]
        check(tok, ids, skip_special=True)
        check(tok, ids, skip_special=False)
