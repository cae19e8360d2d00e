"""Single-session steps vs one batched step of several sessions, for the torch batching tests (CPU and GPU)."""

from __future__ import annotations


def single_and_batched(single, batched, prompts: list[list[int]], steps: int, first_id: int):
    """Prefill each prompt in a session of both backends, then ``steps`` decode rounds: each ``single``
    session alone, the ``batched`` ones in one ``extend_many``.  Returns the (wanted, got) logits of
    every session and round, and both backends' sessions."""
    a = [single.new_session() for _ in prompts]
    b = [batched.new_session() for _ in prompts]
    for sa, sb, p in zip(a, b, prompts):
        sa.extend(p)
        sb.extend(p)
    pairs = []
    for step in range(steps):
        ids = [[first_id + step + i] for i in range(len(prompts))]
        want = [s.extend(t) for s, t in zip(a, ids)]
        pairs += zip(want, batched.extend_many(list(zip(b, ids))))
    return pairs, a, b
