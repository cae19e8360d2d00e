"""Offline test fixtures, built at test time and cached under tests/.cache.

* the real Llama-3.1 tokenizer and the UserLM tokenizer made from it
  (``userlm_local.devkit.assets``, shared with the benchmarks);
* a tiny random-weight Llama (hidden 256, 2 layers, GQA, rope_type llama3)
  with that tokenizer, saved as fp32 safetensors.

Nothing here is committed: the tokenizer files are fetched from the npm
registry the first time and kept in the cache.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from userlm_local.devkit import assets
from userlm_local.devkit.assets import OFFICIAL_TEMPLATE  # noqa: F401 (tests import it from here)

CACHE = Path(os.environ.get("USERLM_TEST_CACHE", Path(__file__).parent / ".cache"))
FIXTURE_VERSION = assets.ASSET_VERSION


def _atomic_dir(dest: Path, build) -> Path:
    return assets.atomic_dir(dest, build)


def llama31_tokenizer_files() -> Path:
    """Directory with the stock Llama-3.1 tokenizer.json and tokenizer_config.json."""
    return assets.llama31_tokenizer_files(CACHE)


def write_userlm_tokenizer(dest: Path) -> None:
    """Llama-3.1 tokenizer + <|endconversation|> (non-special) + UserLM's template."""
    assets.write_userlm_tokenizer(dest, CACHE)


def userlm_tokenizer_dir() -> Path:
    return _atomic_dir(CACHE / f"userlm-tokenizer-v{FIXTURE_VERSION}", write_userlm_tokenizer)


TINY_CONFIG = dict(
    architectures=["LlamaForCausalLM"], model_type="llama",
    hidden_size=256, intermediate_size=768, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    bos_token_id=128000, eos_token_id=128001,  # config.json of UserLM-8b says 128001 too
    rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
)


def write_tiny_llama(dest: Path, *, userlm: bool = True, seed: int = 0) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if userlm:
        write_userlm_tokenizer(dest)
    else:
        src = llama31_tokenizer_files()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / name, dest / name)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(dest / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    config = LlamaConfig(**copy.deepcopy({**TINY_CONFIG, "vocab_size": vocab}))
    config.initializer_range = 0.2  # peaky random logits, so greedy choices are well separated
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(dest), safe_serialization=True)
    # Write the config both transformers 4.x and 5.x read the same way.
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(copy.deepcopy({k: v for k, v in TINY_CONFIG.items() if k in ("rope_theta", "rope_scaling")}))
    cfg["vocab_size"] = vocab
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 128000, "do_sample": True, "eos_token_id": 128009,
        "max_length": 4096, "temperature": 0.6, "top_p": 0.9,
    }, indent=2))


def tiny_userlm_dir() -> Path:
    return _atomic_dir(CACHE / f"tiny-userlm-v{FIXTURE_VERSION}", write_tiny_llama)


def tiny_llama_plain_dir() -> Path:
    """The same tiny Llama without <|endconversation|>: not a UserLM."""
    return _atomic_dir(CACHE / f"tiny-llama-plain-v{FIXTURE_VERSION}",
                       lambda d: write_tiny_llama(d, userlm=False))


def llama_cpp_sdist_tree() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist; RuntimeError when it cannot be had."""
    return assets.llama_cpp_sdist_tree(CACHE)
