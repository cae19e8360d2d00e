"""The model of a run: a fresh small Llama or a --base model (with adapters), its loss and
its evaluation."""

from __future__ import annotations

from pathlib import Path

from ..text.tokenizer import read_json
from ..util.errors import UserError
from .base import base_kind, base_vocab, gguf_model
from .config import llama_config, padded_vocab
from .data import Formats
from .lora import apply_lora
from .spec import RunSpec
from .windows import IGNORE, Window, collate


def check_base(spec: RunSpec) -> None:
    """Fail early (before any data work) when --base is not a causal LM directory."""
    if not spec.base:
        return

    if base_kind(spec.base) == "gguf":
        base_vocab(spec.base)  # reads (and caches) the GGUF: a damaged file fails here, before the data work
        return
    base = Path(spec.base)
    if not base.is_dir():
        raise UserError(f"{base}: no such model directory")
    config = read_json(base / "config.json")
    archs = config.get("architectures") or [] if isinstance(config, dict) else []
    if not isinstance(config, dict) or not archs or not any(str(a).endswith("ForCausalLM") for a in archs):
        raise UserError(f"{base}: not a causal language model (architectures={archs}); --base needs a *ForCausalLM checkpoint")


def build_model(spec: RunSpec, tok_dir: Path, fm: Formats):
    """A fresh tiny Llama, or the --base model with its embeddings resized to the tokenizer."""
    import torch

    torch.manual_seed(spec.seed)
    n_tok = fm.tokenizer.vocab_size
    eot = fm.pad_id
    if spec.base and base_kind(spec.base) == "gguf":
        model = gguf_model(spec.base, n_tok)
        model.config.eos_token_id = eot
        return model
    if spec.base:
        from transformers import AutoConfig, AutoModelForCausalLM

        base = Path(spec.base)
        if not (base / "config.json").is_file():
            raise UserError(f"{base}: not a Hugging Face model directory (no config.json)")
        try:
            config = AutoConfig.from_pretrained(str(base), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{base}: unreadable config.json ({str(exc).splitlines()[0]})") from None
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith("ForCausalLM") for a in archs):
            raise UserError(f"{base}: not a causal language model (architectures={archs})")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(base), dtype=torch.float32, local_files_only=True, trust_remote_code=False)
        except ValueError as exc:
            raise UserError(f"{base}: not a causal language model ({str(exc).splitlines()[0]})") from None
        except OSError as exc:
            raise UserError(f"{base}: could not load the weights ({str(exc).splitlines()[0]})") from None
        if model.get_input_embeddings().weight.shape[0] < n_tok:
            model.resize_token_embeddings(n_tok)
        model.config.eos_token_id = eot
        return model
    from transformers import LlamaConfig, LlamaForCausalLM

    bos = fm.tokenizer.token_id("<|begin_of_text|>")
    cfg = LlamaConfig(**llama_config(spec.size, padded_vocab(n_tok), context=spec.max_positions,
                                     bos_id=bos, eos_id=eot))
    return LlamaForCausalLM(cfg).to(torch.float32)


def count_params(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def decisions(labels):
    """(B, T-1) bool: the targets that are a user turn's end decision.  A turn's labels start
    with the newline after its header (always predicted), then its first token: the decision
    between ``<|endconversation|>`` and speaking, what termination metrics read."""
    import torch

    lab = labels != IGNORE                                                   # (B, T)
    before = torch.nn.functional.pad(lab, (1, 0), value=False)[:, :-2]       # labels[i-2] set
    return lab[:, 1:] & lab[:, :-1] & ~before


def batch_loss(model, ids, labels, bf16: bool, end_weight: float = 1.0):
    """Mean cross-entropy over label positions (the end decisions weighted ``end_weight``,
    normalised by the total weight); the LM head runs on those positions only."""
    import torch
    import torch.nn.functional as F

    target = labels[:, 1:]
    sel = target != IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][sel])
    if end_weight == 1.0:
        return F.cross_entropy(logits.float(), target[sel]), int(sel.sum())
    ce = F.cross_entropy(logits.float(), target[sel], reduction="none")
    w = torch.where(decisions(labels)[sel], end_weight, 1.0)
    return (ce * w).sum() / w.sum(), int(sel.sum())


def evaluate(model, wins: list[Window], batches, pad_id: int, bf16: bool) -> float:
    import torch

    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for idx in batches:
            ids, labels = collate(wins, idx, pad_id)
            loss, n = batch_loss(model, ids, labels, bf16)
            total += float(loss) * n
            count += n
    model.train()
    return total / max(1, count)


def with_adapters(model, spec: RunSpec):
    """The model with the run's LoRA adapters attached (when the run has them)."""
    if spec.lora_rank:
        apply_lora(model, rank=spec.lora_rank, alpha=spec.lora_alpha,
                   layers=spec.lora_layers or model.config.num_hidden_layers,
                   first_new_token=base_vocab(spec.base))
    return model
