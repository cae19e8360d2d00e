"""Checks run on every artifact at conversion time; the results go into the manifest.

1. metadata: architecture, tokenizer model/pre-tokenizer, special ids, ``add_bos_token``,
   the chat template (sha256), the token type of ``<|endconversation|>``;
2. the file loads in llama.cpp and decodes a few tokens;
3. tokenization parity: our HF tokenizer (``Tokenizer.encode``) against llama.cpp's
   (``llama_tokenize``, ``parse_special=False``, ``add_special=False``) on a fixed suite;
4. logits.  F16/BF16 files are gated (mean KLD <= 1e-3, same top-1 >= 99%) against the torch
   model emulating the file's arithmetic (matrices and matmul inputs rounded to F16/BF16, the
   rest float32): that isolates the conversion (layout, Q/K permutation, RoPE, tokenizer) from
   the precision loss of F16/BF16 itself, which depends on the model.  The comparison with the unrounded float32
   checkpoint is recorded too (``logits_vs_fp32``), with the same gates shown but not enforced:
   a random-weight test model loses more to F16/BF16 rounding than a trained one does.
   Quantized files are compared with the F16/BF16 GGUF they were made from (recorded only).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..artifacts.gguf_meta import GGUFFile
from ..runtime.backends.llama_cpp import load
from ..text.prompt_format import ChatFormat, template_sha256
from ..text.tokenizer import Tokenizer
from ..util.errors import UserError
from .calibration import builtin_conversations, render
from .layerwise import reference_logits
from .source import Source
from .tokenizer_meta import USER_DEFINED

KLD_GATE = 1e-3
TOP1_GATE = 0.99
N_LOGIT_CONVERSATIONS = 3
LOGIT_TOKENS = 128  # per conversation: 384 scored positions in all

# Tokenization parity suite: special-token text, Unicode, emoji, code, numbers, whitespace, CJK, accents.
PARITY_SUITE = [
    "",
    "Hello world",
    "<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\nhi there<|eot_id|>",
    "<|endconversation|>",
    "thanks, bye!\n<|endconversation|><|eot_id|>",
    "<|begin_of_text|>text after a BOS string",
    "naïve café résumé, Ærøskøbing, São Paulo, Dvořák",
    "e\u0301 (combining) vs é (precomposed); Å vs A\u030a; ﬁ ligature",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "🦙🚀 😶‍🌫️ 👍🏽 👨‍👩‍👧‍👦 ✅ (emoji)",
    "def f(x):\n    return x ** 2  # square\n\tprint(f'{x!r}')\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // C++",
    "3141592653589793238462643383279 1,000,000.00 3.3 3..3 3...3 0x7fff 1e-5",
    "a  b   c    d\n\n\n  \t\t end  ",
    "   leading spaces",
    "trailing spaces   ",
    "\n",
    "\n\n\n",
    "我想在apple工作1314151天～ 日本語のテキストです。 한국어 텍스트",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
]


def logit_conversations(fmt: ChatFormat) -> list[list[int]]:
    return [render(fmt, m)[:LOGIT_TOKENS] for m in builtin_conversations()[:N_LOGIT_CONVERSATIONS]]


def torch_references(source: Source, convs: list[list[int]], roundings: list[str], *,
                     threads: int | None = None, progress: bool = False) -> dict[str, list[np.ndarray]] | str:
    """Torch logits for each conversation: ``"F32"`` on the checkpoint's weights as they are, and
    ``"F16"``/``"BF16"`` emulating llama.cpp's arithmetic on such a file (see ``reference``), computed
    one layer at a time so that an 8B fits in a laptop's memory.  Returns the reason instead when
    torch is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return "skipped: torch not installed"

    return reference_logits(source, convs, ["F32", *roundings], threads=threads, progress=progress)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def compare_logits(ref: list[np.ndarray], test: list[np.ndarray], block: int = 8) -> dict:
    """Mean / max KL(ref || test) per position (float64, in cache-sized row blocks) and the
    share of positions where both have the same argmax."""
    klds, same = [], 0
    for r, t in zip(ref, test):
        for i in range(0, len(r), block):
            lr = _log_softmax(r[i:i + block].astype(np.float64))
            lt = _log_softmax(t[i:i + block].astype(np.float64))
            klds.append((np.exp(lr) * (lr - lt)).sum(axis=1))
        same += int((r.argmax(axis=1) == t.argmax(axis=1)).sum())
    k = np.concatenate(klds)
    return {"positions": int(k.size), "mean_kld": float(k.mean()), "max_kld": float(k.max()),
            "top1_agreement": same / k.size}


def gated(cmp: dict) -> dict:
    cmp["gates"] = {"mean_kld_max": KLD_GATE, "top1_min": TOP1_GATE}
    cmp["ok"] = cmp["mean_kld"] <= KLD_GATE and cmp["top1_agreement"] >= TOP1_GATE
    return cmp


def check_metadata(g: GGUFFile, source: Source) -> dict:
    """The GGUF's own metadata against what the source says it must be."""
    tok = source.tokenizer
    kv = g.kv
    end_conv = tok.facts.get("end_conversation")
    types = kv.get("tokenizer.ggml.token_type") or []
    found = {
        "architecture": kv.get("general.architecture"),
        "tokenizer_model": kv.get("tokenizer.ggml.model"),
        "pre_tokenizer": kv.get("tokenizer.ggml.pre"),
        "bos": kv.get("tokenizer.ggml.bos_token_id"),
        "eos": kv.get("tokenizer.ggml.eos_token_id"),
        "eot": kv.get("tokenizer.ggml.eot_token_id"),
        "add_bos_token": kv.get("tokenizer.ggml.add_bos_token"),
        "n_tokens": len(types),
        "chat_template_sha256": template_sha256(kv.get("tokenizer.chat_template")),
        "end_conversation_type": types[end_conv] if end_conv is not None and end_conv < len(types) else None,
        "file_type": kv.get("general.file_type"),
    }
    expected = {
        "architecture": "llama", "tokenizer_model": "gpt2", "pre_tokenizer": tok.pre, "bos": tok.bos_id,
        "eos": tok.eos_id, "eot": tok.eot_id, "add_bos_token": False, "n_tokens": source.params.vocab_size,
        "chat_template_sha256": template_sha256(tok.chat_template),
        "end_conversation_type": USER_DEFINED if end_conv is not None else None,
    }
    bad = {k: {"expected": v, "found": found[k]} for k, v in expected.items() if found[k] != v}
    return {"ok": not bad, "found": found, **({"mismatches": bad} if bad else {})}


def check_tokenization(hf_tok, gguf_tok) -> dict:
    mismatches, equal = [], 0
    for text in PARITY_SUITE:
        a, b = hf_tok.encode(text), gguf_tok.encode(text)
        if a == b:
            equal += 1
        else:
            mismatches.append({"text": text[:80], "hf": a[:40], "gguf": b[:40]})
    specials = {}
    for name in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|endconversation|>"):
        specials[name] = [hf_tok.token_id(name), gguf_tok.token_id(name)]
    special_ok = all(a == b for a, b in specials.values())
    return {"ok": not mismatches and special_ok, "cases": len(PARITY_SUITE), "equal": equal,
            "special_ids": specials, **({"mismatches": mismatches[:5]} if mismatches else {})}


def llama_logits(path: Path, convs: list[list[int]], *, allow_non_userlm: bool,
                 threads: int | None = None) -> list[np.ndarray]:
    """llama.cpp logits at every position of each conversation."""

    n_ctx = max(64, max(len(c) for c in convs) + 16)
    backend = load(path, n_ctx=n_ctx, n_batch=n_ctx, threads=threads, allow_non_userlm=allow_non_userlm)
    try:
        return [backend.logits(ids) for ids in convs]
    finally:
        backend.close()


def validate_artifact(path: Path, source: Source, *, references: list[tuple[str, str, object, bool]],
                      allow_non_userlm: bool, threads: int | None = None) -> tuple[dict, list[np.ndarray] | None]:
    """Run every check on one GGUF file; return (results, its logits on the check conversations).

    ``references``: ``(result key, reference name, logits or skip reason, gated)`` tuples."""

    t0 = time.perf_counter()
    out: dict = {"metadata": check_metadata(GGUFFile(path), source)}
    try:
        import llama_cpp  # noqa: F401

    except ImportError:
        out["load"] = out["tokenization"] = out["logits"] = "skipped: llama-cpp-python not installed"
        out["passed"] = out["metadata"]["ok"]
        return out, None
    hf_tok = Tokenizer.from_dir(source.path)
    fmt = ChatFormat(hf_tok, require_userlm=not allow_non_userlm)
    convs = logit_conversations(fmt)
    n_ctx = max(64, max(len(c) for c in convs) + 16)
    try:
        backend = load(path, n_ctx=n_ctx, n_batch=n_ctx, threads=threads, allow_non_userlm=allow_non_userlm)
    except UserError as exc:
        out["load"] = {"ok": False, "error": str(exc)}
        out["passed"] = False
        return out, None
    try:
        # it loads, and decodes greedily from a rendered prompt
        s = backend.new_session()
        last = s.extend(convs[0])
        generated = []
        for _ in range(4):
            tok = int(np.argmax(last))
            generated.append(tok)
            last = s.extend([tok])
        finite = bool(np.isfinite(last).all())
        s.close()
        out["load"] = {"ok": finite, "decoded": generated, "n_vocab": backend.n_vocab}
        out["tokenization"] = check_tokenization(hf_tok, backend.tokenizer)
        logits = [backend.logits(ids) for ids in convs]
    finally:
        backend.close()
    checks = [out["metadata"], out["load"], out["tokenization"]]
    for key, name, ref, gate in references:
        if isinstance(ref, str) or ref is None:
            out[key] = ref or "skipped"
            continue
        cmp = compare_logits(ref, logits)
        cmp["reference"] = name
        out[key] = gated(cmp) if gate else cmp
        if gate:
            checks.append(out[key])
    out["passed"] = all(c.get("ok") for c in checks)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out, logits
