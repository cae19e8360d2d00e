"""Small Llama configurations for training from scratch.

Every config uses Llama-3.1's rope (``rope_type: llama3``, theta 500000) and is
written to ``config.json`` with both the transformers-5 key (``rope_parameters``)
and the transformers-4 keys (``rope_theta`` / ``rope_scaling``), so every
supported version reads the same positions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..util.errors import UserError

ROPE_THETA = 500000.0
ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# name -> (hidden, layers, heads, kv_heads, intermediate)
PRESETS = {
    "micro": (64, 2, 2, 1, 192),     # tests: trains in seconds
    "tiny": (256, 6, 4, 2, 768),     # the bundled models: ~6.8 M params at vocab 8192
    "small": (384, 8, 6, 2, 1024),
}


def llama_config(preset: str, vocab_size: int, *, context: int, bos_id: int, eos_id: int) -> dict:
    """Keyword arguments for ``LlamaConfig`` (tied embeddings, GQA, llama3 rope)."""
    if preset not in PRESETS:
        raise UserError(f"unknown model size {preset!r} (choose {', '.join(PRESETS)})")
    hidden, layers, heads, kv_heads, inter = PRESETS[preset]
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama",
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, max_position_embeddings=context, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        initializer_range=0.02, bos_token_id=bos_id, eos_token_id=eos_id,
        rope_theta=ROPE_THETA, rope_scaling=rope_scaling(context),
    )


def rope_scaling(max_positions: int) -> dict:
    """Llama-3.1's rope scaling; the "original" length must stay below the model's (transformers
    checks), so it is a quarter of it: wavelengths beyond that are stretched 8x, as in Llama-3.1."""
    scaling = copy.deepcopy(ROPE_SCALING)
    scaling["original_max_position_embeddings"] = min(scaling["original_max_position_embeddings"],
                                                      max(1, max_positions // 4))
    return scaling


def padded_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def write_config_json(path: str | Path, model_config) -> None:
    """Re-write ``config.json`` so transformers 4.x and 5.x read the same rope."""
    path = Path(path) / "config.json"
    cfg = json.loads(path.read_text())
    params = cfg.get("rope_parameters") or getattr(model_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        params = dict(params)
        cfg["rope_parameters"] = params
        cfg["rope_theta"] = float(params.get("rope_theta", ROPE_THETA))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = scaling
    path.write_text(json.dumps(cfg, indent=2) + "\n")
