"""The ``--base`` of a fine-tuning run: a Hugging Face directory, a Llama GGUF with the SmolLM
tokenizer (GGUF pre-tokenizer ``smollm``), or ``smollm2``."""

from __future__ import annotations

import functools
from pathlib import Path

from ..artifacts.gguf_source import BASE_ALIASES, is_gguf, read_gguf_source, resolve_base
from ..text.tokenizer import read_json
from ..util.errors import UserError


def base_kind(base: str) -> str:
    """'gguf' or 'hf'; raises UserError for anything else (before any data work)."""
    if str(base).lower() in BASE_ALIASES:
        resolve_base(base)  # the installed package must be there and whole
        return "gguf"
    p = Path(base)
    if not p.exists():
        raise UserError(f"{base}: no such model directory or GGUF file")
    if p.is_file():
        if is_gguf(p):
            return "gguf"
        raise UserError(f"{base}: not a GGUF file nor a model directory")
    return "hf"


@functools.lru_cache(maxsize=2)
def _source(base: str):
    return read_gguf_source(resolve_base(base))


def base_vocab(base: str) -> int:
    """Rows of the base's embedding: ids from here on are tokens the run added."""
    if base_kind(base) == "gguf":
        return int(_source(base).config["vocab_size"])

    return int(read_json(Path(base) / "config.json")["vocab_size"])


def base_tokenizer(base: str):
    """The base's tokenizer as a ``tokenizers.Tokenizer`` (GGUF bases only)."""
    import json

    from tokenizers import Tokenizer

    src = _source(base)
    return Tokenizer.from_str(json.dumps(src.tokenizer_json))


def gguf_model(base: str, n_tokens: int):
    """A float32 ``LlamaForCausalLM`` holding the GGUF's (dequantized) weights, embeddings
    resized to ``n_tokens`` (new rows drawn around the mean of the old ones)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = _source(base)
    cfg = LlamaConfig(**src.config)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state = {name: torch.from_numpy(np.array(w, dtype=np.float32)) for name, w in src.tensors()}
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise UserError(f"{src.path}: tensors missing from the GGUF: {', '.join(sorted(missing)[:4])}")
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # inv_freq was on the meta device
    if model.get_input_embeddings().weight.shape[0] < n_tokens:
        model.resize_token_embeddings(n_tokens, mean_resizing=True)
    return model.float()
