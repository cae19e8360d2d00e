"""The Llama architecture as GGUF sees it: hyper-parameters, tensor names, RoPE factors.

Everything here follows llama.cpp's ``convert_hf_to_gguf.py`` (class ``LlamaModel``) so
our files and llama.cpp's agree: the Q/K rows are permuted from the HF (rotate-half)
layout to llama.cpp's interleaved RoPE layout, and ``rope_type: llama3`` is stored as
the ``rope_freqs.weight`` tensor of per-frequency divisors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.errors import UserError
from ..artifacts.model_files import bound_llama_config, check_llama_config, rope_facts
from ..text.tokenizer import read_json


@dataclass(frozen=True)
class LlamaParams:
    n_layer: int
    hidden: int
    ffn: int
    n_head: int
    n_kv_head: int
    head_dim: int
    head_dim_explicit: bool
    context_length: int
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool
    attention_bias: bool
    rope: dict  # type, theta, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("type") or "default").lower()

    def to_dict(self) -> dict:
        return {
            "n_layer": self.n_layer, "hidden": self.hidden, "ffn": self.ffn, "n_head": self.n_head,
            "n_kv_head": self.n_kv_head, "head_dim": self.head_dim, "context_length": self.context_length,
            "rms_eps": self.rms_eps, "vocab_size": self.vocab_size, "tied_embeddings": self.tied_embeddings,
            "rope": self.rope,
        }


def read_config(src: Path) -> tuple[dict, LlamaParams]:
    if not src.is_dir():
        raise UserError(f"{src}: not a checkpoint directory")
    config = read_json(src / "config.json")
    check_llama_config(config, src, "only LlamaForCausalLM converts")
    bound_llama_config(config, src, src.glob("*.safetensors"))  # before anything is sized from it
    try:
        hidden = int(config["hidden_size"])
        n_head = int(config["num_attention_heads"])
        head_dim = config.get("head_dim")
        params = LlamaParams(
            n_layer=int(config["num_hidden_layers"]),
            hidden=hidden,
            ffn=int(config["intermediate_size"]),
            n_head=n_head,
            n_kv_head=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(head_dim) if head_dim else hidden // n_head,
            head_dim_explicit=head_dim is not None,
            context_length=int(config.get("max_position_embeddings", 2048)),
            rms_eps=float(config.get("rms_norm_eps", 1e-5)),
            vocab_size=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            rope=rope_facts(config),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"{src}/config.json: missing or bad Llama hyper-parameter ({exc})") from None
    if config.get("mlp_bias"):
        raise UserError(f"{src}: mlp_bias=true Llama variants are not supported")
    if params.rope_type not in ("default", "llama3", "linear"):
        raise UserError(f"{src}: rope type {params.rope_type!r} is not supported (default, linear, llama3)")
    if params.head_dim % 2 or params.n_head % params.n_kv_head:
        raise UserError(f"{src}: inconsistent attention shape (heads {params.n_head}/{params.n_kv_head}, "
                        f"head_dim {params.head_dim})")
    return config, params


def llama3_rope_factors(p: LlamaParams) -> np.ndarray:
    """``rope_freqs.weight``: llama.cpp's ``generate_extra_tensors`` for rope_type llama3."""
    r = p.rope
    base = float(r.get("theta", 10000.0))
    dim = p.head_dim
    factor = float(r.get("factor", 8.0))
    low = float(r.get("low_freq_factor", 1.0))
    high = float(r.get("high_freq_factor", 4.0))
    old_ctx = float(r.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
SKIPPED = (".rotary_emb.inv_freq", ".attention.masked_bias")


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name of an HF Llama tensor (None for tensors llama.cpp does not use)."""
    if hf_name.endswith(SKIPPED):
        return None
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name]
    m = _LAYER.match(hf_name)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def needs_permute(hf_name: str) -> bool:
    """Q and K rows (weights and biases) are permuted for llama.cpp's RoPE layout."""
    return hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias",
                             "self_attn.k_proj.weight", "self_attn.k_proj.bias"))


def permute_rows(block: np.ndarray, head_dim: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` on whole heads: rows of each head go from HF's
    [first half | second half] layout to interleaved pairs.  ``block`` holds whole heads."""
    rows = block.shape[0]
    rest = block.shape[1:]
    return (block.reshape(rows // head_dim, 2, head_dim // 2, *rest)
            .swapaxes(1, 2)
            .reshape(block.shape))


def expected_shapes(p: LlamaParams) -> dict[str, tuple[int, ...]]:
    """GGUF name -> expected numpy (HF) shape of every tensor a Llama checkpoint must have."""
    qd, kd = p.n_head * p.head_dim, p.n_kv_head * p.head_dim
    shapes = {
        "token_embd.weight": (p.vocab_size, p.hidden),
        "output_norm.weight": (p.hidden,),
    }
    if not p.tied_embeddings:
        shapes["output.weight"] = (p.vocab_size, p.hidden)
    for i in range(p.n_layer):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (p.hidden,),
            b + "attn_q.weight": (qd, p.hidden),
            b + "attn_k.weight": (kd, p.hidden),
            b + "attn_v.weight": (kd, p.hidden),
            b + "attn_output.weight": (p.hidden, qd),
            b + "ffn_norm.weight": (p.hidden,),
            b + "ffn_gate.weight": (p.ffn, p.hidden),
            b + "ffn_up.weight": (p.ffn, p.hidden),
            b + "ffn_down.weight": (p.hidden, p.ffn),
        })
        if p.attention_bias:
            shapes.update({b + "attn_q.bias": (qd,), b + "attn_k.bias": (kd,), b + "attn_v.bias": (kd,),
                           b + "attn_output.bias": (p.hidden,)})
    return shapes
