"""Dialogues -> token windows of at most ``context`` tokens -> length-bucketed batches.

A flipped K-turn dialogue gives K+1 samples, each the prefix of the next (sample
t is the history up to user turn t plus that turn).  Under causal attention the
loss of every sample equals the loss at its label positions inside the longest
one, so the samples are merged into one sequence with the union of the labels:
the same loss terms for 1/K of the compute.  Samples that are not prefixes of
each other are kept apart.

``flip`` keeps its own 2048-token cap (a later sample of a longer dialogue drops
its oldest exchanges, so it is no longer a prefix and stays a sequence of its own).
A sequence longer than the context is cut at message boundaries into windows;
every window after the first repeats the intent (the system message), as a
runtime that truncates history keeps it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..data.flip import flip

IGNORE = -100


@dataclass
class Seq:
    ids: list[int]
    labels: list[int]
    starts: list[int]    # positions where a message (header) starts
    prefix: int = 0      # ids[:prefix] is repeated at the head of every window (the intent)


def merge_flipped(samples: Sequence) -> list[tuple[list[int], list[int]]]:
    """Merge samples whose ids are successive prefixes; returns (ids, labels) pairs."""
    out: list[tuple[list[int], list[int]]] = []
    cur_ids: list[int] | None = None
    cur_labels: list[int] = []
    for s in samples:
        ids, labels = list(s.input_ids), list(s.labels)
        if cur_ids is not None and len(ids) >= len(cur_ids) and ids[:len(cur_ids)] == cur_ids:
            merged = list(labels)
            for i, lab in enumerate(cur_labels):
                if lab != IGNORE:
                    merged[i] = lab
            cur_ids, cur_labels = ids, merged
            continue
        if cur_ids is not None:
            out.append((cur_ids, cur_labels))
        cur_ids, cur_labels = ids, labels
    if cur_ids is not None:
        out.append((cur_ids, cur_labels))
    return out


def user_seqs(fmt, dialogue, *, with_intent: bool = True) -> list[Seq]:
    """Training sequences of the user model for one dialogue (flipped, merged)."""

    start = len(fmt.start())
    system = fmt.header("system")
    seqs = []
    for ids, labels in merge_flipped(flip(fmt, dialogue, with_intent=with_intent)):
        starts = [i for i, t in enumerate(ids) if t == fmt.ids.start_header]
        prefix = start
        if len(starts) > 1 and ids[starts[0]:starts[0] + len(system)] == system:
            prefix = starts[1]
        seqs.append(Seq(ids, labels, starts, prefix))
    return seqs


def assistant_seqs(afmt, dialogue) -> list[Seq]:
    """Training sequence of the assistant model: loss on assistant turns, no intent."""
    ids, labels, starts = afmt.sample(dialogue.messages)
    return [Seq(ids, labels, starts, 0)]


def windows(seq: Seq, context: int) -> list[tuple[list[int], list[int]]]:
    """Cut ``seq`` into windows of <= ``context`` tokens starting at message boundaries.

    Labels are never counted twice: where the next window restarts at a message
    boundary, the current one stops there.  A single message longer than a
    window is cut, and the rest of it is skipped.
    """
    n = len(seq.ids)
    if n <= context:
        return [(seq.ids, seq.labels)] if any(l != IGNORE for l in seq.labels) else []
    head_ids, head_labels = seq.ids[:seq.prefix], [IGNORE] * seq.prefix
    bounds = sorted(b for b in seq.starts if b >= seq.prefix)
    out = []
    s = 0
    while s < n:
        first = s == 0
        budget = context if first else context - seq.prefix
        if budget <= 0:
            break
        end = s + budget
        if end >= n:
            e, nxt = n, n
        else:
            inside = [b for b in bounds if s < b <= end]
            if inside:
                e = nxt = inside[-1]
            else:  # one message longer than the window: cut it, skip its rest
                e = end
                nxt = next((b for b in bounds if b > end), n)
        ids = seq.ids[s:e] if first else head_ids + seq.ids[s:e]
        labels = seq.labels[s:e] if first else head_labels + seq.labels[s:e]
        if any(l != IGNORE for l in labels):
            out.append((ids, labels))
        s = nxt
    return out


@dataclass
class Window:
    ids: np.ndarray      # int32
    labels: np.ndarray   # int32, IGNORE where no loss

    def __len__(self) -> int:
        return len(self.ids)


def to_windows(seqs: Iterable[Seq], context: int) -> list[Window]:
    out = []
    for seq in seqs:
        for ids, labels in windows(seq, context):
            out.append(Window(np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)))
    return out


def make_batches(wins: Sequence[Window], batch_tokens: int) -> list[list[int]]:
    """Group window indices by length so a batch holds <= batch_tokens tokens with padding."""
    order = sorted(range(len(wins)), key=lambda i: (len(wins[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = len(wins[i])  # sorted ascending: the newest is the longest
        if cur and longest * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def collate(wins: Sequence[Window], idx: Sequence[int], pad_id: int):
    """(input_ids, labels) int64 tensors, right-padded (causal attention needs no mask)."""
    import torch

    width = max(len(wins[i]) for i in idx)
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    labels = np.full((len(idx), width), IGNORE, dtype=np.int64)
    for r, i in enumerate(idx):
        w = wins[i]
        ids[r, :len(w)] = w.ids
        labels[r, :len(w)] = w.labels
    return torch.from_numpy(ids), torch.from_numpy(labels)
