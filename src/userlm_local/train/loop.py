"""Training: tokenizer, model, data windows, the optimisation loop, checkpoints.

A run lives in ``OUT``: ``OUT/checkpoints/`` holds ``run.json`` (everything that
defines the run), the run's tokenizer and ``step-NNNNNNN.pt`` checkpoints (model,
optimizer, step, RNG state).  The batch of step ``s`` is a pure function of the
seed and ``s`` and the learning rate a pure function of ``s``, so a resumed run
takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from ..machine import cpu_has_amx
from .base import base_kind, base_tokenizer, base_vocab, gguf_model
from .lora import trainable_state
from .checkpoint import checkpoint_files, load_checkpoint, read_log, save_checkpoint
from .windows import IGNORE, Window, assistant_seqs, collate, epoch_order, make_batches, to_windows, user_seqs

DIRECTIONS = ("user", "assistant")
PRECISIONS = ("auto", "bf16", "fp32")
TOKENIZER_CHARS = 40_000_000  # text the BPE trainer sees at most


@dataclass
class RunSpec:
    """Everything that defines a training run (saved as ``checkpoints/run.json``)."""

    direction: str = "user"
    size: str = "tiny"
    vocab: int = 8192
    context: int = 512
    max_positions: int = 2048
    batch_tokens: int = 4096
    steps: int = 1000
    lr: float | None = None          # default: 2e-3 from scratch, 2e-5 fine-tuning
    min_lr_ratio: float = 0.1
    warmup: int | None = None        # default: 5% of the steps (at most 200)
    weight_decay: float = 0.1
    seed: int = 0
    precision: str = "auto"          # auto: bf16 autocast where the CPU has AMX, else float32
    threads: int | None = None
    base: str | None = None
    tokenizer: str | None = None
    data: str | None = None
    train_dialogues: int | None = None
    val_dialogues: int = 200
    with_intent: bool = True
    checkpoint_every: int = 200
    eval_every: int = 0
    keep_checkpoints: int = 2
    name: str | None = None
    lora_rank: int = 0               # 0: fine-tune every parameter; >0: adapters on the top layers
    lora_alpha: float = 32.0
    lora_layers: int = 0             # how many top layers get adapters (0: all)
    assistant_cap: int = 0           # keep at most this many tokens of each assistant reply (0: all)
    windows_per_dialogue: int = 0    # keep the first and the last windows of a dialogue, this many (0: all)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown direction {self.direction!r} (choose user or assistant)")
        for name in ("steps", "batch_tokens", "context", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr is None:
            self.lr = 1e-3 if self.lora_rank else 2e-5 if self.base else 2e-3
        if self.lora_rank and not self.base:
            raise UserError("--lora-rank needs --base (adapters go on a pretrained model)")
        for name in ("lora_rank", "lora_layers", "assistant_cap", "windows_per_dialogue"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative")
        if self.warmup is None:
            self.warmup = min(200, max(1, self.steps // 20))
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r} (choose {', '.join(PRECISIONS)})")
        if self.batch_tokens < self.context:
            raise UserError(f"--batch-tokens ({self.batch_tokens}) must hold one window of --context ({self.context})")

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and cpu_has_amx("bf16"))

    @classmethod
    def from_json(cls, data: dict) -> "RunSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def lr_at(spec: RunSpec, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data

def load_split(spec: RunSpec, split: str, limit: int | None):
    from ..data import load_dialogues

    try:
        dialogues = load_dialogues(split, limit=limit, path=spec.data)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the {split} dialogues ({exc})") from None
    if not dialogues:
        raise UserError(f"the {split} split is empty")
    return dialogues


def shuffled(dialogues: list, seed: int) -> list:
    out = list(dialogues)
    random.Random(seed).shuffle(out)
    return out


def tokenizer_texts(dialogues, max_chars: int = TOKENIZER_CHARS):
    n = 0
    for d in dialogues:
        for text in [d.intent, *(m["content"] for m in d.messages)]:
            if text:
                yield text
                n += len(text)
        if n >= max_chars:
            return


class Formats:
    """The run's tokenizer and the renderer of its direction."""

    def __init__(self, tok_dir: Path, direction: str):
        from ..chat import ChatFormat
        from ..tokenizer import Tokenizer
        from .assistant import AssistantFormat

        self.tokenizer = Tokenizer.from_dir(tok_dir)
        self.direction = direction
        if direction == "user":
            self.fmt = ChatFormat(self.tokenizer)
        else:
            self.fmt = AssistantFormat(self.tokenizer)
        self.pad_id = self.tokenizer.token_id("<|eot_id|>")

    def capped(self, dialogue, cap: int):
        """The dialogue with each assistant reply cut to its first ``cap`` tokens."""
        from ..data import Dialogue

        msgs = []
        for m in dialogue.messages:
            if m["role"] == "assistant":
                ids = self.tokenizer.encode(m["content"])
                if len(ids) > cap:
                    m = {"role": "assistant", "content": self.tokenizer.decode(ids[:cap]).rstrip() + " ..."}
            msgs.append(m)
        return Dialogue(dialogue.id, msgs, dialogue.intent)

    def seqs(self, dialogue, with_intent: bool):
        if self.direction == "user":
            return user_seqs(self.fmt, dialogue, with_intent=with_intent)
        return assistant_seqs(self.fmt, dialogue)


def build_windows(fm: Formats, dialogues, spec: RunSpec, token_goal: int | None) -> tuple[list[Window], int]:
    """Windows of the dialogues in order, stopping once ``token_goal`` tokens are collected."""
    out: list[Window] = []
    total = used = 0
    for d in dialogues:
        if spec.assistant_cap:
            d = fm.capped(d, spec.assistant_cap)
        wins = to_windows(fm.seqs(d, spec.with_intent), spec.context)
        if spec.windows_per_dialogue and len(wins) > spec.windows_per_dialogue:
            keep = spec.windows_per_dialogue
            wins = wins[:(keep + 1) // 2] + wins[len(wins) - keep // 2:]
        used += 1
        out += wins
        total += sum(len(w) for w in wins)
        if token_goal is not None and total >= token_goal:
            break
    return out, used


# ------------------------------------------------------------------ tokenizer + model

def make_tokenizer(spec: RunSpec, dest: Path, train_dialogues) -> None:
    """Write the run's tokenizer (BPE trained here, or --tokenizer, or the --base one) to ``dest``."""
    from tokenizers import AddedToken, Tokenizer

    from ..chat import END_HEADER, EOT, START_HEADER, USERLM_TEMPLATE
    from .assistant import ASSISTANT_TEMPLATE
    from .bpe import add_end_conversation, save_tokenizer, train_bpe

    if spec.base and base_kind(spec.base) == "gguf":
        tok = base_tokenizer(spec.base)
        missing = [t for t in (START_HEADER, END_HEADER, EOT) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    elif spec.base or spec.tokenizer:
        src = Path(spec.base or spec.tokenizer)
        if not (src / "tokenizer.json").is_file():
            raise UserError(f"{src}: no tokenizer.json (a fast tokenizer file is required)")
        try:
            tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        except Exception as exc:
            raise UserError(f"{src}/tokenizer.json: not a readable tokenizer ({exc})") from None
        missing = [t for t in (START_HEADER, END_HEADER, EOT) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    else:
        log(f"training a byte-level BPE tokenizer ({spec.vocab} tokens) on the training split")
        # one id is kept for <|endconversation|>, so user and assistant models share every other id
        tok = train_bpe(tokenizer_texts(train_dialogues), spec.vocab - 1)
    if spec.direction == "user":
        add_end_conversation(tok)
    save_tokenizer(tok, dest, chat_template=USERLM_TEMPLATE if spec.direction == "user" else ASSISTANT_TEMPLATE)


def check_base(spec: RunSpec) -> None:
    """Fail early (before any data work) when --base is not a causal LM directory."""
    if not spec.base:
        return
    from ..tokenizer import read_json

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

    from .config import llama_config, padded_vocab

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


# ------------------------------------------------------------------ loss

def batch_loss(model, ids, labels, bf16: bool):
    """Mean cross-entropy over label positions; the LM head runs on those positions only."""
    import torch
    import torch.nn.functional as F

    target = labels[:, 1:]
    sel = target != IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][sel])
    loss = F.cross_entropy(logits.float(), target[sel])
    return loss, int(sel.sum())


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


# ------------------------------------------------------------------ the run

class _Stop(Exception):
    pass


def prepare_out(out: Path, *, resume: bool, force: bool) -> None:
    ckpt = out / "checkpoints"
    if resume:
        if not (ckpt / "run.json").is_file():
            raise UserError(f"{out}: nothing to resume (no checkpoints/run.json)")
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            hint = "pass --resume to continue it" if ckpt.is_dir() else "pass --force to overwrite"
            raise UserError(f"{out}: directory is not empty; {hint}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_lock(path: Path, out: Path):
    """An exclusive lock on a run directory; a second ``train`` on it fails at once."""
    import fcntl

    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out}: another train run is using this directory; wait for it or choose another --out") from None
    return f


def train(spec: RunSpec, out: str | Path, *, resume: bool = False, force: bool = False,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Run (or resume) training and export the model to ``out``; returns the summary.

    ``stop_after`` ends the process of training after that many steps of this call
    (with a checkpoint), as an interruption would: tests use it for resume.
    """
    import torch

    out = Path(out)
    check_base(spec)
    lock_path = out / "checkpoints" / ".lock"
    if lock_path.exists():  # before --force may delete a live run's directory
        run_lock(lock_path, out).close()
    prepare_out(out, resume=resume, force=force)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    lock = run_lock(lock_path, out)  # held until this call returns  # noqa: F841
    tok_dir = ckpt_dir / "tokenizer"
    if resume:
        spec = RunSpec.from_json(json.loads((ckpt_dir / "run.json").read_text()))
    if spec.threads:
        torch.set_num_threads(spec.threads)
    wall0 = time.time()

    train_dialogues = shuffled(load_split(spec, "train", spec.train_dialogues), spec.seed)
    if not (tok_dir / "tokenizer.json").is_file():
        tmp = ckpt_dir / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_tokenizer(spec, tmp, train_dialogues)
        os.replace(tmp, tok_dir)
    (ckpt_dir / "run.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    fm = Formats(tok_dir, spec.direction)

    goal = None if spec.train_dialogues else spec.steps * spec.batch_tokens
    wins, used = build_windows(fm, train_dialogues, spec, goal)
    if not wins:
        raise UserError("the training split gave no trainable windows")
    batches = make_batches(wins, spec.batch_tokens)
    val_d = load_split(spec, "validation", spec.val_dialogues) if spec.val_dialogues else []
    val_wins, _ = build_windows(fm, val_d, spec, None)
    val_batches = make_batches(val_wins, spec.batch_tokens)
    data_tokens = sum(len(w) for w in wins)
    log(f"data: {used} training dialogues -> {len(wins)} windows, {data_tokens} tokens, "
        f"{len(batches)} batches; validation: {len(val_d)} dialogues, {len(val_wins)} windows "
        f"({time.time() - wall0:.0f} s)")

    model = build_model(spec, tok_dir, fm)
    model.train()
    if spec.lora_rank:
        from .lora import apply_lora

        apply_lora(model, rank=spec.lora_rank, alpha=spec.lora_alpha,
                   layers=spec.lora_layers or model.config.num_hidden_layers,
                   first_new_token=base_vocab(spec.base))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # the embedding of an adapter run trains its added rows only: no decay on the rest
    decay = [p for n, p in params if p.ndim >= 2 and not (spec.lora_rank and "embed" in n)]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and not (spec.lora_rank and "embed" in n))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
    step, elapsed, tokens_seen, label_tokens = 0, 0.0, 0, 0
    last = checkpoint_files(ckpt_dir)
    if resume and last:
        state = load_checkpoint(last[-1])
        model.load_state_dict(state["model"], strict=not spec.lora_rank)
        opt.load_state_dict(state["optim"])
        step, elapsed = state["step"], state["elapsed"]
        tokens_seen, label_tokens = state["tokens"], state["label_tokens"]
        log(f"resuming from {last[-1].name} (step {step}/{spec.steps})")
    log_path = out / "train_log.jsonl"
    history = read_log(log_path, step)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    n_params = count_params(model)
    log(f"model: {n_params / 1e6:.2f} M parameters; {spec.steps} steps of <= {spec.batch_tokens} tokens")

    def snapshot():
        weights = trainable_state(model) if spec.lora_rank else model.state_dict()
        return {"step": step, "model": weights, "optim": opt.state_dict(), "elapsed": elapsed,
                "tokens": tokens_seen, "label_tokens": label_tokens}

    from tqdm import tqdm

    bar = tqdm(total=spec.steps, initial=step, file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=2.0, desc=f"train {spec.direction}")
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):  # a killed run saves a checkpoint, as Ctrl-C does
        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            pass
    ema = None
    order_epoch, order = -1, []
    done_here = 0
    logf = open(log_path, "a")
    try:
        while step < spec.steps:
            epoch, pos = divmod(step, len(batches))
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(batches), spec.seed, epoch)
            t0 = time.perf_counter()
            ids, labels = collate(wins, batches[order[pos]], fm.pad_id)
            lr = lr_at(spec, step)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, n_lab = batch_loss(model, ids, labels, spec.bf16)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            n_tok = int(sum(len(wins[i]) for i in batches[order[pos]]))
            step += 1
            elapsed += dt
            tokens_seen += n_tok
            label_tokens += n_lab
            value = float(loss.detach())
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            rec = {"step": step, "loss": round(value, 5), "lr": lr, "grad_norm": round(gnorm, 4),
                   "tokens": tokens_seen, "label_tokens": label_tokens, "tok_per_s": round(n_tok / dt),
                   "elapsed_s": round(elapsed, 2)}
            if spec.eval_every and step % spec.eval_every == 0 and step < spec.steps and val_batches:
                rec["val_loss"] = round(evaluate(model, val_wins, val_batches, fm.pad_id, spec.bf16), 5)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}", refresh=False)
            bar.update(1)
            done_here += 1
            if step % spec.checkpoint_every == 0 or step == spec.steps:
                save_checkpoint(ckpt_dir, snapshot(), spec.keep_checkpoints)
            if stop_after is not None and done_here >= stop_after and step < spec.steps:
                raise _Stop
    except KeyboardInterrupt:
        bar.close()
        logf.close()
        path = save_checkpoint(ckpt_dir, snapshot(), spec.keep_checkpoints)
        log(f"interrupted at step {step}; checkpoint {path}; continue with --resume")
        raise
    except _Stop:
        bar.close()
        logf.close()
        save_checkpoint(ckpt_dir, snapshot(), spec.keep_checkpoints)
        return {"step": step, "stopped": True}
    finally:
        if hasattr(signal, "SIGTERM"):
            try:
                signal.signal(signal.SIGTERM, old_term)
            except ValueError:
                pass
    bar.close()
    logf.close()

    history = read_log(log_path, step)
    train_tail = [r["loss"] for r in history if "loss" in r][-50:]
    val_loss = evaluate(model, val_wins, val_batches, fm.pad_id, spec.bf16) if val_batches else None
    summary = {
        "name": spec.name or out.name, "direction": spec.direction, "steps": step,
        "params": n_params, "tokens_seen": tokens_seen, "label_tokens": label_tokens,
        "train_seconds": round(elapsed, 1), "wall_seconds_this_call": round(time.time() - wall0, 1),
        "tok_per_s": round(tokens_seen / max(elapsed, 1e-9)),
        "train_loss": round(sum(train_tail) / len(train_tail), 4) if train_tail else None,
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "val_ppl": round(math.exp(val_loss), 2) if val_loss is not None else None,
        "train_dialogues": used, "train_windows": len(wins), "train_data_tokens": data_tokens,
        "val_dialogues": len(val_d), "val_windows": len(val_wins),
        "tokenizer_size": fm.tokenizer.vocab_size,
    }
    with open(log_path, "a") as f:
        f.write(json.dumps({"step": step, "final": True, **{k: v for k, v in summary.items()}}) + "\n")
    from .export import export

    export(model, tok_dir, out, spec, summary, history)
    log(f"done: train loss {summary['train_loss']}, validation loss {summary['val_loss']} "
        f"({summary['tok_per_s']} tok/s); model in {out}")
    return summary


def export_latest(out: str | Path, *, val_dialogues: int = 0) -> dict:
    """Export the latest checkpoint of a run (finished, interrupted or still going) into ``out``
    without training further: what a long run has learned so far."""
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    if not (ckpt_dir / "run.json").is_file():
        raise UserError(f"{out}: no training run here (no checkpoints/run.json)")
    last = checkpoint_files(ckpt_dir)
    if not last:
        raise UserError(f"{out}: the run has no checkpoint yet")
    spec = RunSpec.from_json(json.loads((ckpt_dir / "run.json").read_text()))
    fm = Formats(ckpt_dir / "tokenizer", spec.direction)
    model = build_model(spec, ckpt_dir / "tokenizer", fm)
    if spec.lora_rank:
        from .lora import apply_lora

        apply_lora(model, rank=spec.lora_rank, alpha=spec.lora_alpha,
                   layers=spec.lora_layers or model.config.num_hidden_layers, first_new_token=base_vocab(spec.base))
    state = load_checkpoint(last[-1])
    model.load_state_dict(state["model"], strict=not spec.lora_rank)
    model.eval()
    history = read_log(out / "train_log.jsonl", state["step"])
    val_loss = None
    if val_dialogues:
        val_wins, _ = build_windows(fm, load_split(spec, "validation", val_dialogues), spec, None)
        val_loss = evaluate(model, val_wins, make_batches(val_wins, spec.batch_tokens), fm.pad_id, spec.bf16)
    tail = [r["loss"] for r in history if "loss" in r][-50:]
    summary = {
        "name": spec.name or out.name, "direction": spec.direction, "steps": state["step"],
        "params": count_params(model), "tokens_seen": state["tokens"], "label_tokens": state["label_tokens"],
        "train_seconds": round(state["elapsed"], 1),
        "tok_per_s": round(state["tokens"] / max(state["elapsed"], 1e-9)),
        "train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "val_ppl": round(math.exp(val_loss), 2) if val_loss is not None else None,
        "val_dialogues": val_dialogues, "tokenizer_size": fm.tokenizer.vocab_size,
        "train_dialogues": None, "train_windows": None, "exported_from": last[-1].name,
    }
    from .export import export

    export(model, ckpt_dir / "tokenizer", out, spec, summary, history)
    return summary
