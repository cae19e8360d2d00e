"""Training: the optimisation loop, checkpoints, and the export (the run directory: ``run_dir``).

A run lives in ``OUT``: ``OUT/checkpoints/`` holds ``run.json`` (everything that
defines the run), the run's tokenizer and ``step-NNNNNNN.pt`` checkpoints (model,
optimizer, step, RNG state).  The batch of step ``s`` is a pure function of the
seed and ``s`` and the learning rate a pure function of ``s``, so a resumed run
takes the same steps as an uninterrupted one.

``train`` is four named steps: ``open_run`` (lock, directory, spec, tokenizer),
``prepare_data`` (windows and batches), ``build_trainer`` (model, adapters, optimizer,
resumed state) and ``run_steps`` (the loop; every way out of it saves a checkpoint),
then ``finish`` (summary and export).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..util.errors import UserError
from ..util.interrupts import sigterm_as_interrupt
from .checkpoint import checkpoint_files, load_checkpoint, read_log, save_checkpoint
from .data import Formats, build_windows, check_data, load_split, log, make_tokenizer, shuffled  # noqa: F401
from .export import export
from .lora import trainable_state
from .model import batch_loss, build_model, count_params, evaluate, with_adapters
from .spec import RunSpec, lr_at
from .run_dir import (Run, check_inputs, check_not_running, discard_new_run, open_run, prepare_out,  # noqa: F401
                      run_lock, saved_spec, with_absolute_paths)
from .windows import collate, epoch_order, make_batches

__all__ = ["RunSpec", "train", "export_latest", "run_lock", "prepare_out", "load_split", "shuffled",
           "make_tokenizer", "check_inputs", "check_not_running", "saved_spec", "with_absolute_paths"]


class _Stop(Exception):
    pass


@dataclass
class Data:
    fm: Formats
    wins: list
    batches: list
    used: int
    val_dialogues: int
    val_wins: list
    val_batches: list

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.wins)


@dataclass
class State:
    step: int = 0
    elapsed: float = 0.0
    tokens_seen: int = 0
    label_tokens: int = 0


def prepare_data(run: Run) -> Data:
    spec = run.spec
    train_dialogues = shuffled(load_split(spec, "train", spec.train_dialogues), spec.seed)
    if not (run.tok_dir / "tokenizer.json").is_file():
        tmp = run.ckpt_dir / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_tokenizer(spec, tmp, train_dialogues)
        os.replace(tmp, run.tok_dir)
    (run.ckpt_dir / "run.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    fm = Formats(run.tok_dir, spec.direction)
    goal = None if spec.train_dialogues else spec.steps * spec.batch_tokens
    wins, used = build_windows(fm, train_dialogues, spec, goal)
    if not wins:
        raise UserError("the training split gave no trainable windows")
    val_d = load_split(spec, "validation", spec.val_dialogues) if spec.val_dialogues else []
    val_wins, _ = build_windows(fm, val_d, spec, None)
    data = Data(fm, wins, make_batches(wins, spec.batch_tokens), used, len(val_d), val_wins,
                make_batches(val_wins, spec.batch_tokens))
    log(f"data: {used} training dialogues -> {len(wins)} windows, {data.tokens} tokens, "
        f"{len(data.batches)} batches; validation: {len(val_d)} dialogues, {len(val_wins)} windows "
        f"({time.time() - run.wall0:.0f} s)")
    return data


def build_trainer(run: Run, data: Data, *, resume: bool):
    """(model, trainable parameters, optimizer, state), resumed from the last checkpoint if asked."""
    import torch

    spec = run.spec
    model = with_adapters(build_model(spec, run.tok_dir, data.fm), spec)
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # the embedding of an adapter run trains its added rows only: no decay on the rest
    decays = lambda n, p: p.ndim >= 2 and not (spec.lora_rank and "embed" in n)  # noqa: E731
    opt = torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p)], "weight_decay": spec.weight_decay},
                             {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}],
                            lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
    state = State()
    last = checkpoint_files(run.ckpt_dir)
    if resume and last:
        saved = load_checkpoint(last[-1])
        model.load_state_dict(saved["model"], strict=not spec.lora_rank)
        opt.load_state_dict(saved["optim"])
        state = State(saved["step"], saved["elapsed"], saved["tokens"], saved["label_tokens"])
        log(f"resuming from {last[-1].name} (step {state.step}/{spec.steps})")
    return model, params, opt, state


def checkpoint(run: Run, model, opt, state: State) -> Path:
    weights = trainable_state(model) if run.spec.lora_rank else model.state_dict()
    return save_checkpoint(run.ckpt_dir, {"step": state.step, "model": weights, "optim": opt.state_dict(),
                                          "elapsed": state.elapsed, "tokens": state.tokens_seen,
                                          "label_tokens": state.label_tokens}, run.spec.keep_checkpoints)


def one_step(run: Run, data: Data, model, params, opt, state: State, order: list[int]) -> dict:
    import torch

    spec = run.spec
    t0 = time.perf_counter()
    batch = data.batches[order[state.step % len(data.batches)]]
    ids, labels = collate(data.wins, batch, data.fm.pad_id)
    lr = lr_at(spec, state.step)
    for g in opt.param_groups:
        g["lr"] = lr
    loss, n_lab = batch_loss(model, ids, labels, spec.bf16, spec.end_weight)
    loss.backward()
    gnorm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0))
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    n_tok = int(sum(len(data.wins[i]) for i in batch))
    state.step += 1
    state.elapsed += dt
    state.tokens_seen += n_tok
    state.label_tokens += n_lab
    return {"step": state.step, "loss": round(float(loss.detach()), 5), "lr": lr, "grad_norm": round(gnorm, 4),
            "tokens": state.tokens_seen, "label_tokens": state.label_tokens, "tok_per_s": round(n_tok / dt),
            "elapsed_s": round(state.elapsed, 2)}


def run_steps(run: Run, data: Data, model, params, opt, state: State, log_path: Path, *,
              stop_after: int | None, progress: bool) -> bool:
    """Train until the last step (True) or ``stop_after`` steps of this call (False).  Every
    way out saves a checkpoint; an interruption says how to resume and re-raises."""
    from tqdm import tqdm

    spec = run.spec
    bar = tqdm(total=spec.steps, initial=state.step, file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=2.0, desc=f"train {spec.direction}")
    ema, order_epoch, order, done_here = None, -1, [], 0
    finished = False
    try:
        with open(log_path, "a") as logf, sigterm_as_interrupt():
            while state.step < spec.steps:
                epoch = state.step // len(data.batches)
                if epoch != order_epoch:
                    order_epoch, order = epoch, epoch_order(len(data.batches), spec.seed, epoch)
                rec = one_step(run, data, model, params, opt, state, order)
                ema = rec["loss"] if ema is None else 0.95 * ema + 0.05 * rec["loss"]
                if spec.eval_every and state.step % spec.eval_every == 0 and state.step < spec.steps \
                        and data.val_batches:
                    rec["val_loss"] = round(evaluate(model, data.val_wins, data.val_batches, data.fm.pad_id,
                                                     spec.bf16), 5)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{state.tokens_seen / max(state.elapsed, 1e-9):.0f}",
                                refresh=False)
                bar.update(1)
                done_here += 1
                if state.step % spec.checkpoint_every == 0 or state.step == spec.steps:
                    checkpoint(run, model, opt, state)
                if stop_after is not None and done_here >= stop_after and state.step < spec.steps:
                    raise _Stop
        finished = True
    except _Stop:
        pass
    except KeyboardInterrupt:
        path = checkpoint(run, model, opt, state)
        log(f"interrupted at step {state.step}; checkpoint {path}; continue with --resume")
        raise
    finally:
        bar.close()
    if not finished:
        checkpoint(run, model, opt, state)
    return finished


def summary_of(run: Run, model, state: State, history: list[dict], *, val_loss: float | None,
               fm: Formats, **extra) -> dict:
    spec = run.spec
    tail = [r["loss"] for r in history if "loss" in r][-50:]
    return {
        "name": spec.name or run.out.name, "direction": spec.direction, "steps": state.step,
        "params": count_params(model), "tokens_seen": state.tokens_seen, "label_tokens": state.label_tokens,
        "train_seconds": round(state.elapsed, 1),
        "tok_per_s": round(state.tokens_seen / max(state.elapsed, 1e-9)),
        "train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "val_ppl": round(math.exp(val_loss), 2) if val_loss is not None else None,
        "tokenizer_size": fm.tokenizer.vocab_size, **extra,
    }


def finish(run: Run, data: Data, model, state: State, log_path: Path) -> dict:
    history = read_log(log_path, state.step)
    val_loss = evaluate(model, data.val_wins, data.val_batches, data.fm.pad_id, run.spec.bf16) \
        if data.val_batches else None
    summary = summary_of(run, model, state, history, val_loss=val_loss, fm=data.fm,
                         wall_seconds_this_call=round(time.time() - run.wall0, 1), train_dialogues=data.used,
                         train_windows=len(data.wins), train_data_tokens=data.tokens,
                         val_dialogues=data.val_dialogues, val_windows=len(data.val_wins))
    with open(log_path, "a") as f:
        f.write(json.dumps({"step": state.step, "final": True, **summary}) + "\n")
    export(model, run.tok_dir, run.out, run.spec, summary, history)
    log(f"done: train loss {summary['train_loss']}, validation loss {summary['val_loss']} "
        f"({summary['tok_per_s']} tok/s); model in {run.out}")
    return summary


def train(spec: RunSpec, out: str | Path, *, resume: bool = False, force: bool = False,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Run (or resume) training and export the model to ``out``; returns the summary.

    ``stop_after`` ends this call after that many steps (with a checkpoint), as an
    interruption would: tests use it for resume.
    """
    import torch

    run = open_run(spec, Path(out), resume=resume, force=force)
    if run.spec.threads:
        torch.set_num_threads(run.spec.threads)
    try:
        data = prepare_data(run)
        model, params, opt, state = build_trainer(run, data, resume=resume)
    except UserError:
        if not resume:
            discard_new_run(run)
        raise
    log_path = run.out / "train_log.jsonl"
    log_path.write_text("".join(json.dumps(r) + "\n" for r in read_log(log_path, state.step)))
    log(f"model: {count_params(model) / 1e6:.2f} M parameters; {run.spec.steps} steps of <= "
        f"{run.spec.batch_tokens} tokens")
    if not run_steps(run, data, model, params, opt, state, log_path, stop_after=stop_after, progress=progress):
        return {"step": state.step, "stopped": True}
    return finish(run, data, model, state, log_path)


def export_latest(out: str | Path, *, val_dialogues: int | None = None) -> dict:
    """Export the latest checkpoint of a run (finished, interrupted or still going) into ``out``
    without training further: what a long run has learned so far.  The validation loss is taken
    on ``val_dialogues`` dialogues (default: the run's own --val-dialogues; 0: none)."""

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    if not (ckpt_dir / "run.json").is_file():
        raise UserError(f"{out}: no training run here (no checkpoints/run.json)")
    last = checkpoint_files(ckpt_dir)
    if not last:
        raise UserError(f"{out}: the run has no checkpoint yet")
    spec = saved_spec(out)
    if val_dialogues is None:
        val_dialogues = spec.val_dialogues
    if val_dialogues < 0:
        raise UserError("--val-dialogues must not be negative")
    if val_dialogues:
        check_data(replace(spec, val_dialogues=val_dialogues))
    run = Run(spec, out, ckpt_dir, ckpt_dir / "tokenizer", lock=None)
    fm = Formats(run.tok_dir, spec.direction)
    model = with_adapters(build_model(spec, run.tok_dir, fm), spec)
    saved = load_checkpoint(last[-1])
    model.load_state_dict(saved["model"], strict=not spec.lora_rank)
    model.eval()
    state = State(saved["step"], saved["elapsed"], saved["tokens"], saved["label_tokens"])
    history = read_log(out / "train_log.jsonl", state.step)
    val_loss = None
    if val_dialogues:
        val_wins, _ = build_windows(fm, load_split(spec, "validation", val_dialogues), spec, None)
        val_loss = evaluate(model, val_wins, make_batches(val_wins, spec.batch_tokens), fm.pad_id, spec.bf16)
    summary = summary_of(run, model, state, history, val_loss=val_loss, fm=fm, val_dialogues=val_dialogues,
                         train_dialogues=None, train_windows=None, exported_from=last[-1].name)
    export(model, run.tok_dir, out, spec, summary, history)
    return summary
