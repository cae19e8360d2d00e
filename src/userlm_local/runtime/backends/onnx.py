"""ONNX Runtime GenAI backend: a model directory written by ``convert --to onnx`` (or by
onnxruntime-genai's own model builder).

One ``og.Generator`` per session keeps the conversation's KV cache across turns:
``extend`` = ``append_tokens`` + the last position's logits, ``trim`` = ``rewind_to``.
What the runtime cannot do is emulated, and costs what it says:

- ``score``/``logits`` run a scratch generator over the ids and read every position's logits
  from the model's ``logits`` output;
- there is no ``extend_many``: a generator with ``batch_size > 1`` can only rewind to 0, so
  sessions decode one at a time (the scheduler then calls ``extend`` per session).

The tokenizer is ours (``tokenizer.json`` in the directory), never the runtime's, so token ids
match the torch and llama.cpp backends exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...util.errors import UserError
from ...artifacts.model_files import ModelInfo, check_listed_files, failed_warning, listing, pick_artifact, warn_failed_validation
from ...text.prompt_format import USERLM_TEMPLATE, ChatFormat, chat_format, template_sha256
from ...text.tokenizer import Tokenizer, read_json
from .base import BackendBase, SessionBookkeeping, Usage

GENAI_CONFIG = "genai_config.json"


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise UserError("ONNX models need the 'onnx' extra: pip install 'userlm-local[onnx]'") from None
    return og


def model_dir(path: str | Path, quant: str | None = None) -> tuple[Path, dict | None, dict | None]:
    """(model directory, manifest, artifact entry) of an ONNX model directory or of a
    ``convert --to onnx`` output directory (its manifest picks the artifact: ``model_files.pick_artifact``)."""
    p = Path(path)
    if (p / GENAI_CONFIG).is_file():
        lst = listing(p, "onnx")
        return (p, lst.manifest, lst.entry) if lst.entry is not None else (p, None, None)
    manifest, art, where, _ = pick_artifact(p, quant)
    if not (where / GENAI_CONFIG).is_file():
        raise UserError(f"{where}: no {GENAI_CONFIG} (not an ONNX Runtime GenAI model directory)")
    return where, manifest, art


def read_graph(where: Path):
    """``model.onnx`` without its weights (None when the ``onnx`` package is missing); one line when it
    is missing or unreadable."""
    try:
        import onnx
    except ImportError:
        return None
    path = where / "model.onnx"
    if not path.is_file():
        raise UserError(f"{where}: damaged: model.onnx missing; convert it again")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UserError(f"{path}: damaged: not a readable ONNX graph ({type(exc).__name__}); convert it again") from None


def check_external_data(where: Path, graph) -> None:
    """Every weight the graph keeps outside it lies inside its file (a truncated ``model.onnx.data``
    would fail only when ONNX Runtime reads it: 'out of bounds')."""
    ends: dict[str, int] = {}
    for t in graph.graph.initializer:
        if t.data_location != 1:  # EXTERNAL
            continue
        ext = {e.key: e.value for e in t.external_data}
        if "length" not in ext:
            continue
        name = ext.get("location", "")
        ends[name] = max(ends.get(name, 0), int(ext.get("offset", 0)) + int(ext["length"]))
    for name, end in sorted(ends.items()):
        f = where / name
        if not f.is_file():
            raise UserError(f"{where}: damaged: {name} is missing (model.onnx keeps its weights there); "
                            "convert it again")
        size = f.stat().st_size
        if size < end:
            raise UserError(f"{f}: damaged: truncated: the graph's weights end at byte {end} but the file has "
                            f"{size} bytes; convert it again")


def graph_facts(graph) -> dict:
    """What the graph itself says: ``ffn`` (the first gate projection's width) and ``dtype`` (the
    weights' type: FP32, FP16, or INT8/INT4/INT4_MIXED from the ``MatMulNBits`` bits)."""
    if graph is None:
        return {}
    from onnx import TensorProto, helper

    inits = {t.name: t for t in graph.graph.initializer}
    bits, floats, ffn = set(), set(), None
    for node in graph.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "MatMulNBits":
            bits.add(int(attrs.get("bits", 4)))
            n = attrs.get("N")
        elif node.op_type == "MatMul" and weight is not None and len(weight.dims) == 2:
            floats.add(weight.data_type)
            n = weight.dims[1]
        else:
            continue
        if ffn is None and node.name.endswith("mlp/gate_proj/MatMul") and n:
            ffn = int(n)
    dtype = {frozenset({8}): "INT8", frozenset({4}): "INT4", frozenset({4, 8}): "INT4_MIXED"}.get(frozenset(bits))
    if not bits and len(floats) == 1:
        dtype = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16"}.get(floats.pop())
    return {"ffn": ffn, "dtype": dtype}


class OnnxSession(SessionBookkeeping):
    def __init__(self, backend: "OnnxBackend"):
        self.backend = backend
        self.generator = None
        self.tokens: list[int] = []
        self.usage = Usage()
        self.context_length = backend.context_length

    def extend(self, ids: list[int]) -> np.ndarray:
        self.check_extend(ids)
        if self.generator is None:
            self.generator = self.backend.generator(self.context_length)
        self.generator.append_tokens(np.asarray(ids, dtype=np.int32))
        self.record_extend(ids)
        return np.asarray(self.generator.get_logits(), dtype=np.float32)[0, -1].copy()

    def trim(self, n: int) -> int:
        keep = self.check_trim(n)
        if n:
            if keep == 0:
                self.generator = None
            else:
                self.generator.rewind_to(keep)
            del self.tokens[keep:]
        return len(self.tokens)

    def close(self) -> None:
        self.generator = None
        self.tokens = []


class OnnxBackend(BackendBase):
    name = "onnx"

    def __init__(self, path: str, og, model, tokenizer: Tokenizer, fmt: ChatFormat, info: ModelInfo, n_ctx: int):
        self.path, self.og, self.model = path, og, model
        self.tokenizer, self.fmt, self.info = tokenizer, fmt, info
        self.context_length = n_ctx

    def generator(self, max_length: int):
        og = self.og
        params = og.GeneratorParams(self.model)
        # always set: the runtime's default is the model's whole context, one shared
        # past/present buffer of that length per generator
        params.set_search_options(max_length=max_length)
        return og.Generator(self.model, params)

    def new_session(self) -> OnnxSession:
        return OnnxSession(self)

    def logits(self, ids: list[int], start: int = 0, positions: list[int] | None = None) -> np.ndarray:
        """Logits at every index of ``ids`` from ``start`` on, or at the sorted indices ``positions``."""
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.context_length:
            raise UserError(f"{len(ids)} tokens are more than this context of {self.context_length}")
        g = self.generator(len(ids) + 1)
        g.append_tokens(np.asarray(ids, dtype=np.int32))
        out = np.asarray(g.get_output("logits"), dtype=np.float32)[0]
        return out[start:] if positions is None else out[np.asarray(positions, dtype=np.int64)]

    def score(self, ids: list[int], start: int, extra: int | None = None):
        """Teacher-forced log P(ids[i] | ids[:i]) for i in [start, len(ids)); with ``extra``, also
        log P(extra | ids[:i]) at the same positions (a second array)."""
        if not 1 <= start <= len(ids):
            raise ValueError("score() needs 1 <= start <= len(ids)")
        x = self.logits(ids, start - 1).astype(np.float64)[: len(ids) - start]
        x -= x.max(axis=1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        lp = logp[np.arange(len(logp)), ids[start:]]
        return lp if extra is None else (lp, logp[:, extra])

    def describe(self) -> dict:
        return {"format": "onnx", "quant": self.info.dtype}

    def close(self) -> None:
        self.model = None


def inspect(path: str | Path, *, allow_non_userlm: bool = False, allow_pickle: bool = False) -> ModelInfo:
    """The facts of an ONNX model directory: ``genai_config.json``, the tokenizer, the graph without
    its weights, and the manifest of the conversion when it lists the directory (no weights loaded).
    A damaged directory (a file missing, of another size than its manifest says, or weights past the
    end of ``model.onnx.data``) is one line."""
    where, _, _ = model_dir(path)
    lst = listing(where, "onnx")
    graph = read_graph(where)
    if graph is not None:
        check_external_data(where, graph)
    check_listed_files(lst)
    cfg = read_json(where / GENAI_CONFIG)
    try:
        model = cfg["model"]
        dec = model["decoder"]
    except (KeyError, TypeError):
        raise UserError(f"{where / GENAI_CONFIG}: not an ONNX Runtime GenAI config") from None
    if model.get("type") != "llama":
        raise UserError(f"{where}: not a Llama model (genai_config type {model.get('type')!r})")
    tok = Tokenizer.from_dir(where)
    fmt = chat_format(tok, allow_non_userlm=allow_non_userlm)
    ids = fmt.ids if fmt is not None else None
    template = tok.chat_template
    # the manifest's facts only when it lists this directory; else what the directory itself holds
    mm = ((lst.manifest or {}).get("model") or {}) if lst.entry is not None else {}
    facts = graph_facts(graph)
    warnings = [lst.note] if lst.note else []
    if lst.failed:
        warnings.append(failed_warning(lst))
    if template is not None and template.strip() != USERLM_TEMPLATE.strip():
        warnings.append("the chat template differs from UserLM-8b's; userlm-local renders the UserLM format itself")
    ffn = facts.get("ffn") or mm.get("ffn")
    return ModelInfo(
        path=str(where), format="onnx", architecture="llama",
        hidden_size=int(dec["hidden_size"]), num_layers=int(dec["num_hidden_layers"]),
        num_heads=int(dec["num_attention_heads"]), num_kv_heads=int(dec["num_key_value_heads"]),
        intermediate_size=int(ffn) if ffn else None, vocab_size=int(model["vocab_size"]),
        tokenizer_size=tok.vocab_size, context_length=int(model.get("context_length", 2048)),
        rope=dict(mm.get("rope") or {}),
        dtype=(lst.entry or {}).get("quant") or facts.get("dtype"),
        weights=sorted(f.name for f in where.glob("*.onnx*")), special=ids,
        is_userlm=ids is not None and ids.end_conversation is not None, template_sha256=template_sha256(template),
        template_is_userlm=template is not None and template.strip() == USERLM_TEMPLATE.strip(),
        add_bos_token=tok.add_bos_token, eos={"genai_config": model.get("eos_token_id")}, warnings=warnings,
        sampling={k: v for k, v in (cfg.get("search") or {}).items() if k in ("temperature", "top_p", "top_k")},
    )


def load(path: str | Path, *, n_ctx: int = 4096, threads: int | None = None, add_bos: bool = False,
         allow_non_userlm: bool = False, device: str = "cpu", quant: str | None = None,
         dtype: str | None = None, allow_pickle: bool = False, **_ignored) -> OnnxBackend:
    """``device="cuda[:N]"`` selects the CUDA execution provider (needs ``onnxruntime-genai-cuda``).
    ``dtype`` and ``allow_pickle`` are accepted for a common CLI: the files carry their own types."""
    og = _og()
    where, _, _ = model_dir(path, quant)
    info = inspect(where, allow_non_userlm=allow_non_userlm)  # (a damaged directory stops here, in one line)
    warn_failed_validation(listing(where, "onnx"))
    tokenizer = Tokenizer.from_dir(where)
    fmt = chat_format(tokenizer, add_bos=add_bos, allow_non_userlm=allow_non_userlm)
    config = og.Config(str(where))
    options: dict = {}
    if threads:
        options["intra_op_num_threads"] = int(threads)
    if device != "cpu":
        if not device.startswith("cuda"):
            raise UserError(f"--device {device}: the ONNX backend runs on cpu or cuda[:N]")
        config.clear_providers()
        config.append_provider("cuda")
        if ":" in device:
            config.set_provider_option("cuda", "device_id", device.split(":", 1)[1])
    if options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    try:
        model = og.Model(config)
    except Exception as exc:  # the runtime raises RuntimeError/OSError with its own text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if device != "cpu" and "cuda" in first.lower():
            raise UserError(f"--device {device}: this onnxruntime-genai has no CUDA support ({first}); "
                            "install onnxruntime-genai-cuda on a machine with an NVIDIA GPU") from None
        raise UserError(f"{where}: ONNX Runtime could not load the model ({first})") from None
    return OnnxBackend(str(where), og, model, tokenizer, fmt, info, min(n_ctx, info.context_length))
