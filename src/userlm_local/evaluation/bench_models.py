"""The bench's models: what a model file is (named by file name and content hash, its converter's
manifest entry), the label a report gives it, and loading one checked against REF."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts.manifest import combined_sha256
from ..artifacts.model_files import model_format
from ..runtime.backends import load_backend, load_options
from ..runtime.backends.onnx import model_dir
from ..util.errors import UserError
from ..util.files import hash_file
from .scoring import check_userlm


def describe_model(path: Path) -> dict:
    """The model's file facts and, for a converted artifact, its manifest entry.  Named by its file
    name and content hash, never by where it lies on this machine (recorded results travel)."""
    out: dict = {"name": Path(path).resolve().name}
    if path.is_dir() and model_format(path) == "onnx":
        where, _, entry = model_dir(path)
        out["format"] = "onnx"
        out["bytes"] = sum(f.stat().st_size for f in where.glob("model.onnx*"))
        if entry:
            out["manifest"] = {k: entry.get(k) for k in ("quant", "bytes", "files", "validation") if k in entry}
            out["quant"] = entry.get("quant")
            out["sha256"] = entry.get("sha256")
        return out
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        out["format"] = "hf"
        out["bytes"] = sum(f.stat().st_size for f in weights)
        out["sha256"] = combined_sha256({f.name: hash_file(f).hexdigest() for f in weights})
        return out
    out["format"] = "gguf"
    out["bytes"] = path.stat().st_size
    out["sha256"] = hash_file(path).hexdigest()
    manifest = path.parent / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
        entry = next(a for a in data.get("artifacts", []) if a.get("file") == path.name)
    except (OSError, ValueError, StopIteration, AttributeError):
        return out
    out["manifest"] = {k: entry.get(k) for k in ("quant", "bytes", "sha256", "imatrix", "validation") if k in entry}
    im = out["manifest"].get("imatrix")
    if isinstance(im, dict) and isinstance(im.get("file"), str):  # convert --imatrix FILE records where it was
        out["manifest"]["imatrix"] = {**im, "file": Path(im["file"]).name}
    out["quant"] = entry.get("quant")
    return out


def label_of(desc: dict) -> str:
    quant = desc.get("quant")
    if not quant:
        return desc["name"]
    im = (desc.get("manifest") or {}).get("imatrix")
    if not isinstance(im, dict):
        return quant
    datasets = im.get("datasets")
    if isinstance(datasets, list) and datasets:  # what the imatrix was computed on, as the converter records it
        made_on = str(datasets[0])
    else:  # a manifest written before the field: an imatrix read from a file said "file X (datasets: ...)"
        calibration = str(im.get("calibration", "?"))
        made_on = calibration.split("(datasets: ", 1)[1] if calibration.startswith("file ") and \
            "(datasets: " in calibration else calibration
    return f"{quant}+imatrix:{made_on.split()[0]}"


# how the bench loads the models of its intrinsic part, recorded in bench.json's config (the
# extrinsic tasks load theirs as ``simulate`` does, one KV pool).  A KV stream per sequence
# (llama.cpp kv_unified=false): the campaign's rounds are mostly prefill of replayed assistant
# turns, 1.24x faster split (see llama_cpp.KV_SPLIT); scoring runs one sequence (level)
ENGINE = {"n_ctx": 4096, "gguf_kv_cache": "split"}


def load_checked(path: Path, ref=None, *, sequences: int = 1):
    """Load a model for the bench; a candidate must share REF's vocabulary, chat format and tokenization."""
    backend = load_backend(path, **load_options(path, n_ctx=ENGINE["n_ctx"], n_seq_max=sequences,
                                                kv_split=ENGINE["gguf_kv_cache"] == "split"))
    check_userlm(backend)
    if ref is None:
        return backend
    probe = "Hello, can you help me plan a trip to Kyoto? <|endconversation|> 123 ünïcödé"
    ids = ref.fmt.render([{"role": "user", "content": "hi"}])
    if backend.fmt.ids != ref.fmt.ids or backend.tokenize(probe) != ref.tokenize(probe):
        problem = "its vocabulary or chat format differs from REF's"
    elif backend.logits(ids, len(ids) - 1).shape[-1] != ref.logits(ids, len(ids) - 1).shape[-1]:
        problem = "its vocabulary size differs from REF's"
    else:
        return backend
    backend.close()
    raise UserError(f"{path}: {problem}")
