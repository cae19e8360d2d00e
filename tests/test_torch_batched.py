"""Batched decode on the torch backend (what runs by default on a GPU; forced here on the CPU):
the single-token steps of several sessions in one forward pass give the logits each session
gets alone, and each session's cache goes on correctly afterwards."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from batching import single_and_batched  # noqa: E402
from userlm_local.runtime.backends.torch import load  # noqa: E402
from userlm_local.defaults import resolve_user_model  # noqa: E402


def test_batched_steps_equal_single_ones():
    path = resolve_user_model("tiny")
    alone, together = load(path), load(path, batched=True)
    assert not alone.batched and together.batched  # the CPU default stays one session at a time
    # In float64, so the CPU's float32 kernels (a batch of rows and one row take different ones, and
    # their accumulation order differs between AMX, AVX-512 and AVX2) play no part: what is left is each
    # logit's rounding to float32 on the way out, <= 2**-23 of their scale; 2**-20 of it is 8x that.
    alone.model.double()
    together.model.double()
    prompts = [[1, 2, 3, 4, 5], [10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]]
    pairs, a, b = single_and_batched(alone, together, prompts, steps=5, first_id=100)
    tol = 2**-20 * max(float(np.abs(w).max()) for w, _ in pairs)
    for w, g in pairs:
        np.testing.assert_allclose(g, w, rtol=0, atol=tol)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    np.testing.assert_allclose(b[1].extend([7, 8, 9]), a[1].extend([7, 8, 9]), rtol=0, atol=tol)  # caches intact
    b[2].trim(3)
    a[2].trim(3)
    np.testing.assert_allclose(b[2].extend([5]), a[2].extend([5]), rtol=0, atol=tol)


def test_a_cuda_device_without_cuda_is_one_clear_error(tmp_path, capsys):
    import torch

    from userlm_local import cli

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = cli.main(["simulate", "--user", "tiny", "--assistant", "tiny", "--device", "cuda", "--limit", "1",
                   "--out", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--device cuda" in err[0], err
    assert not (tmp_path / "t.jsonl").exists()  # nothing written
