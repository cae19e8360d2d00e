"""What defines a training run (``RunSpec``, saved as ``checkpoints/run.json``) and its
learning-rate schedule, a pure function of the step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..util.errors import UserError
from ..util.machine import cpu_has_amx
from .config import PRESETS

DIRECTIONS = ("user", "assistant")
PRECISIONS = ("auto", "bf16", "fp32")
MIN_VOCAB = 300  # a byte-level BPE: 256 bytes, the special tokens, a few merges


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
    assistant_tail: int = 0          # with assistant_cap: also keep the last this many tokens of a cut reply
    end_weight: float = 1.0          # loss weight of the end decision (the first token of each user turn)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        """Every value is checked here, before a run touches its directory or its data: a bad
        one is a one-line error, never a traceback after minutes of tokenizer training."""

        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown direction {self.direction!r} (choose user or assistant)")
        if self.size not in PRESETS:
            raise UserError(f"unknown model size {self.size!r} (choose {', '.join(PRESETS)})")
        for name in ("steps", "batch_tokens", "context", "max_positions", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("train_dialogues", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.vocab < MIN_VOCAB:
            raise UserError(f"--vocab must be at least {MIN_VOCAB} (the 256 bytes and the special tokens)")
        if self.lr is None:
            self.lr = 1e-3 if self.lora_rank else 2e-5 if self.base else 2e-3
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number (got {self.lr:g})")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must not be negative (got {self.weight_decay:g})")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise UserError(f"--lora-alpha must be a positive number (got {self.lora_alpha:g})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"min_lr_ratio must be between 0 and 1 (got {self.min_lr_ratio:g})")
        if self.lora_rank and not self.base:
            raise UserError("--lora-rank needs --base (adapters go on a pretrained model)")
        for name in ("lora_rank", "lora_layers", "assistant_cap", "assistant_tail", "windows_per_dialogue",
                     "val_dialogues", "eval_every", "warmup"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative")
        if self.assistant_tail and not self.assistant_cap:
            raise UserError("--assistant-tail needs --assistant-cap (the tail is kept of replies cut to the cap)")
        if not (math.isfinite(self.end_weight) and self.end_weight > 0):
            raise UserError(f"--end-weight must be a positive number (got {self.end_weight:g})")
        if self.end_weight != 1.0 and self.direction != "user":
            raise UserError("--end-weight is for --direction user (the assistant has no end decision)")
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

