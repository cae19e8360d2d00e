"""Checks run on every ONNX directory at conversion time (recorded in the manifest).

1. metadata: ``genai_config.json``'s shape and stop ids against the source, the chat template
   (sha256) and the special ids of the tokenizer files;
2. tokenization parity: our tokenizer on the directory's files against the source's (gated),
   and onnxruntime-genai's own tokenizer on the same suite (recorded: the runtime's tokenizer is
   what a user of onnxruntime-genai alone would get; userlm-local never uses it);
3. the model loads in onnxruntime-genai and decodes greedily;
4. logits on the check conversations against the torch float32 reference, gated per type
   (``GATES``: mean KLD and same top-1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..runtime.backends.onnx import load
from ..text.prompt_format import ChatFormat, template_sha256
from ..text.tokenizer import Tokenizer
from ..util.errors import UserError
from .onnx_quant import OnnxQuant
from .source import Source
from .validate import PARITY_SUITE, check_tokenization, compare_logits, logit_conversations

# mean KLD vs torch float32, same top-1: fp32 checks the graph itself; the others allow for their rounding
GATES = {"fp32": (1e-4, 0.99), "fp16": (1e-3, 0.98), "int8": (1e-2, 0.95), "int4": (1e-1, 0.85),
         "int4_mixed": (1e-1, 0.85)}


def _metadata(directory: Path, source: Source, hf_tok) -> dict:
    cfg = json.loads((directory / "genai_config.json").read_text(encoding="utf-8"))
    p, facts = source.params, source.tokenizer.facts
    dec = cfg["model"]["decoder"]
    eos = cfg["model"]["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    checks = {
        "shape": (dec["num_hidden_layers"], dec["num_attention_heads"], dec["num_key_value_heads"], dec["head_size"],
                  dec["hidden_size"], cfg["model"]["vocab_size"])
        == (p.n_layer, p.n_head, p.n_kv_head, p.head_dim, p.hidden, p.vocab_size),
        "stop_ids": eos == {i for i in (facts.get("eot"), facts.get("end_of_text")) if i is not None},
        "chat_template": template_sha256(hf_tok.chat_template) == template_sha256(source.tokenizer.chat_template),
        "end_conversation": hf_tok.token_id("<|endconversation|>") == facts.get("end_conversation"),
    }
    return {"ok": all(checks.values()), **checks}


def _runtime_tokenizer(og, model, source_tok) -> dict:
    try:
        tok = og.Tokenizer(model)
    except Exception as exc:  # the runtime reports its own errors
        return {"ok": False, "error": str(exc).splitlines()[0]}
    equal, first = 0, None
    for text in PARITY_SUITE:
        ours = source_tok.encode(text)
        try:
            theirs = [int(t) for t in tok.encode(text)]
        except Exception as exc:
            theirs = [f"error: {exc}"]
        if theirs == ours:
            equal += 1
        elif first is None:
            first = {"text": text[:80], "ours": ours[:20], "runtime": theirs[:20]}
    return {"ok": equal == len(PARITY_SUITE), "cases": len(PARITY_SUITE), "equal": equal,
            **({"first_mismatch": first} if first else {})}


def validate_onnx(directory: Path, source: Source, q: OnnxQuant, references, *, allow_non_userlm: bool,
                  threads: int | None = None) -> dict:
    t0 = time.perf_counter()
    src_tok = Tokenizer.from_dir(source.path)
    out: dict = {}
    art_tok = Tokenizer.from_dir(directory)
    out["metadata"] = _metadata(directory, source, art_tok)
    out["tokenization"] = check_tokenization(src_tok, art_tok)
    convs = logit_conversations(ChatFormat(src_tok, require_userlm=not allow_non_userlm))
    try:
        backend = load(directory, n_ctx=max(len(c) for c in convs) + 16, threads=threads,
                       allow_non_userlm=allow_non_userlm)
    except UserError as exc:
        out["load"] = {"ok": False, "error": str(exc)}
        out["passed"] = False
        return out
    try:
        s = backend.new_session()
        last, decoded = s.extend(convs[0]), []
        for _ in range(4):
            decoded.append(int(np.argmax(last)))
            last = s.extend([decoded[-1]])
        out["load"] = {"ok": bool(np.isfinite(last).all()), "decoded": decoded}
        s.close()
        out["runtime_tokenizer"] = _runtime_tokenizer(backend.og, backend.model, src_tok)
        logits = [backend.logits(ids) for ids in convs]
    finally:
        backend.close()
    checks = [out["metadata"], out["tokenization"], out["load"]]
    if isinstance(references, str) or references is None:
        out["logits"] = references or "skipped"
    else:
        kld_gate, top1_gate = GATES[q.name]
        cmp = compare_logits(references, logits)
        cmp.update(reference="torch float32 on the checkpoint's weights", gate_mean_kld=kld_gate,
                   gate_top1=top1_gate, ok=cmp["mean_kld"] <= kld_gate and cmp["top1_agreement"] >= top1_gate)
        out["logits"] = cmp
        checks.append(cmp)
    out["passed"] = all(c.get("ok") for c in checks)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
