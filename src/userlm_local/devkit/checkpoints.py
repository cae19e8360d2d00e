"""Random-weight Llama checkpoints of UserLM-8b's shape (or a smaller one), for benchmarks that
measure conversion memory and time without the real weights.

The config is UserLM-8b's (Llama-3.1-8B: rope llama3, untied lm_head, 128257 vocabulary rows:
Llama-3.1's 128256 + ``<|endconversation|>``) with the layer sizes of a named shape; the tensors
are random bf16 bit patterns of weight-like magnitude, written chunk by chunk in HF's shard order,
so an 8B source is written without holding a shard in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .assets import write_userlm_tokenizer

VOCAB = 128257  # Llama-3.1's 128256 + <|endconversation|>

SHAPES = {
    # UserLM-8b = Llama-3.1-8B
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336),
    # Llama-3.2-1B's shape but untied (a mid-size check, ~2.5 GB source)
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
    # for developing this script
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=768),
}


def userlm_config(shape: dict) -> dict:
    """config.json of UserLM-8b (Llama-3.1-8B), with the given layer sizes."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        **shape,
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        "vocab_size": VOCAB, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "initializer_range": 0.02,
        "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "pretraining_tp": 1, "use_cache": True,
        "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "torch_dtype": "bfloat16",
    }


def hf_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in the order of the HF Llama-3.1-8B shards."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "mlp.down_proj.weight", (h, f)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "post_attention_layernorm.weight", (h,)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)), (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.v_proj.weight", (kv, h))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


# ------------------------------------------------------------------ random bf16 safetensors, streamed

CHUNK = 32 << 20  # values per generated chunk (64 MB of bf16)


def _random_bf16(rng: np.random.Generator, n: int, norm: bool) -> np.ndarray:
    """n random bfloat16 bit patterns: |x| in [2^-9, 2^-5) with random sign and mantissa (|x| < 0.032,
    weight-like), or values near 1.0 for norms.  Cheap: built from random bytes, no float math."""
    r = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
    if norm:
        return (0x3F80 | (r & 0x001F)).astype(np.uint16)  # 1.0 .. 1.24
    exp = 118 + ((r >> 7) & 3)  # 2^-9 .. 2^-6 exponents
    return ((r & 0x807F) | (exp << 7)).astype(np.uint16)


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> int:
    """One safetensors file, tensor data generated and written chunk by chunk."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            left = int(np.prod(shape))
            norm = len(shape) == 1
            while left:
                n = min(left, CHUNK)
                f.write(_random_bf16(rng, n, norm).tobytes())
                left -= n
    return path.stat().st_size


def write_checkpoint(dest: Path, shape: str, shard_bytes: int, *, cache: Path, seed: int = 0,
                     log: Callable[[str], None] = print) -> dict:
    """A UserLM checkpoint of ``shape`` in ``dest`` (created): config, the real UserLM tokenizer
    (fetched into ``cache``), random bf16 shards of at most ``shard_bytes`` and their index."""
    dest.mkdir(parents=True)
    cfg = userlm_config(SHAPES[shape])
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 128000, "do_sample": True, "eos_token_id": 128009, "max_length": 4096,
        "temperature": 0.6, "top_p": 0.9}, indent=2))
    write_userlm_tokenizer(dest, cache)
    tensors = hf_tensors(cfg)
    shards, cur, size = [], [], 0
    for name, shp in tensors:
        n = int(np.prod(shp)) * 2
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shp))
        size += n
    shards.append(cur)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, part in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(dest / fname, part, rng)
        for name, shp in part:
            weight_map[name] = fname
            total += int(np.prod(shp)) * 2
        log(f"  wrote {fname} ({(dest / fname).stat().st_size / 2**30:.2f} GiB)")
    (dest / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    n_params = sum(int(np.prod(s)) for _, s in tensors)
    return {"shape": shape, "config": cfg, "n_params": n_params, "shards": len(shards),
            "bytes": sum(p.stat().st_size for p in dest.iterdir())}
