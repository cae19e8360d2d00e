"""``manifest.json``: one file per output directory describing every artifact in it.

Loaders read the manifest, never file names.  Layout::

    {"schema": 1, "format": "gguf", "created", "tool": {...},
     "source": {"path", "name", "dtype", "files": {name: sha256}, "sha256"},
     "model": {hyper-parameters}, "tokenizer": {eot, end_of_text, end_conversation,
     start_header, end_header, bos, eos, eos_sources, newline, pre, ...},
     "chat_template", "chat_template_sha256", "chat_template_is_userlm",
     "sampling": {"generation_config": {...}, "presets": {...}, "gguf_keys": {...}},
     "artifacts": [{"file", "quant", "ftype", "bytes", "sha256", "created", "made_from",
                    "imatrix": null | {...}, "validation": {...}}]}

ONNX output directories have ``"format": "onnx"``; each artifact is then a directory
(``"kind": "directory"``, ``"files": {name: sha256}``, ``sha256`` over those) that
onnxruntime-genai loads.

This module reads manifests; ``convert.manifest`` writes them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from ..util import jsonio
from ..util.errors import UserError
from ..util.files import hash_file

MANIFEST = "manifest.json"
SCHEMA = 1

# Without --quant an output directory's artifact is picked highest precision first (``find_artifact``,
# ``model_files.pick_artifact``), among those that passed their validation when any did.
PRECISION = ("F32", "FP32", "BF16", "F16", "FP16", "Q8_0", "INT8", "Q6_K", "INT4_MIXED", "Q5_K_M", "Q4_K_M",
             "INT4", "IQ4_XS")


def precision_rank(quant: str | None) -> int:
    """0 for the highest precision; an unknown quant type after every known one."""
    return PRECISION.index(quant) if quant in PRECISION else len(PRECISION)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    return hash_file(path).hexdigest()


def combined_sha256(files: dict[str, str]) -> str:
    lines = "".join(f"{k}  {v}\n" for k, v in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = jsonio.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, jsonio.TooDeep) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts", []), list):
        raise UserError(f"{path}: not a userlm-local manifest")
    return data


def find_artifact(path: str | Path, quant: str | None = None) -> tuple[dict, dict, Path]:
    """For a loader: (manifest, artifact entry, file path) of a GGUF file or an output directory.

    ``path`` is a directory with a manifest (``quant`` picks the artifact; without it the
    directory must hold exactly one, or the highest-precision one is taken), or a GGUF file
    whose directory has a manifest listing it.
    """
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    manifest = read_manifest(directory)
    if manifest is None:
        raise UserError(f"{directory}: no {MANIFEST} (convert with 'userlm-local convert')")
    arts = manifest.get("artifacts", [])
    if p.is_file():
        match = [a for a in arts if (directory / a.get("file", "")).resolve() == p.resolve()]
        if not match:
            raise UserError(f"{p}: not listed in {directory / MANIFEST}")
        return manifest, match[0], p
    if quant is not None:
        match = [a for a in arts if str(a.get("quant", "")).lower() == quant.lower()]
        if not match:
            have = ", ".join(a.get("quant", "?") for a in arts) or "none"
            raise UserError(f"{directory}: no {quant} artifact (have: {have})")
        art = match[0]
    else:
        if not arts:
            raise UserError(f"{directory}: the manifest lists no artifacts")
        art = sorted(arts, key=lambda a: precision_rank(a.get("quant")))[0]
    return manifest, art, directory / art["file"]
