"""Writing ``manifest.json`` (its layout: ``artifacts.manifest``, which reads it).

A second conversion into the same directory from the same source adds or replaces
artifacts; a different source is refused unless ``force`` (its entries are then dropped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__
from ..artifacts.manifest import MANIFEST, SCHEMA, combined_sha256, now, read_manifest, sha256_file  # noqa: F401
from ..runtime.sampling import PRESETS
from ..text.prompt_format import USERLM_TEMPLATE
from ..util.errors import UserError
from ..util.files import write_text_atomic


def tool_versions(fmt: str = "gguf") -> dict:
    out = {"name": "userlm-local", "version": __version__}
    for mod in (("gguf", "llama_cpp") if fmt == "gguf" else ("onnx", "onnxruntime_genai")):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except ImportError:
            out[mod] = None
    return out


def _dist_version(mod: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version({"llama_cpp": "llama-cpp-python", "onnxruntime_genai": "onnxruntime-genai"}.get(mod, mod))
    except metadata.PackageNotFoundError:
        return None


def common_section(source, file_hashes: dict[str, str], fmt: str = "gguf") -> dict:
    tok = source.tokenizer
    s = source.sampling()
    gguf_keys = {}
    if "temperature" in s:
        gguf_keys["general.sampling.temp"] = s["temperature"]
    for k in ("top_p", "top_k"):
        if k in s:
            gguf_keys[f"general.sampling.{k}"] = s[k]
    template = tok.chat_template
    return {
        "schema": SCHEMA,
        "format": fmt,
        "tool": tool_versions(fmt),
        "source": {"path": str(source.path.resolve()), "name": source.name, "dtype": source.dtype,
                   "n_params": source.n_params, "files": file_hashes, "sha256": combined_sha256(file_hashes)},
        "model": {"architecture": "llama", **source.params.to_dict()},
        "tokenizer": {k: v for k, v in tok.facts.items()},
        "chat_template": template,
        "chat_template_sha256": (hashlib.sha256(template.encode()).hexdigest() if template is not None else None),
        "chat_template_is_userlm": template is not None and template.strip() == USERLM_TEMPLATE.strip(),
        "sampling": {
            "generation_config": s,
            "presets": {name: {"temperature": p.temperature, "top_p": p.top_p} for name, p in PRESETS.items()},
            "gguf_keys": gguf_keys,
        },
    }


def check_compatible(directory: Path, source_sha256: str, force: bool) -> None:
    """Refuse to mix artifacts of two different sources in one directory (unless ``force``)."""
    old = read_manifest(directory)
    if old is None or force:
        return
    old_sha = (old.get("source") or {}).get("sha256")
    if old_sha and old_sha != source_sha256:
        raise UserError(f"{directory}: holds artifacts converted from another source "
                        f"({(old.get('source') or {}).get('path')}); use another --out or --force")


def update(directory: Path, common: dict, artifact: dict) -> dict:
    """Add (or replace, by file name) one artifact and rewrite the manifest atomically."""
    directory = Path(directory)
    old = read_manifest(directory) or {}
    keep = []
    if (old.get("source") or {}).get("sha256") == common["source"]["sha256"]:
        keep = [a for a in old.get("artifacts", []) if a.get("file") != artifact["file"]
                and (directory / a.get("file", "")).exists()]
    manifest = {**common, "created": now(), "artifacts": sorted(keep + [artifact], key=lambda a: a["file"])}
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
