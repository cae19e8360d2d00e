"""The single-GPU path, on a machine with CUDA (skipped elsewhere; ``bench/gpu_check.sh`` runs it
there): the torch backend on the device, batched decode, the sampler on the device, a campaign."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device here", allow_module_level=True)

from batching import single_and_batched  # noqa: E402
from userlm_local import cli  # noqa: E402
from userlm_local.runtime.backends.torch import load  # noqa: E402
from userlm_local.defaults import resolve_user_model  # noqa: E402
from userlm_local.runtime.sampling import SamplingParams, rng_for, torch_sample  # noqa: E402

PROBS = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02])


def test_logits_on_the_device_match_the_cpu():
    path = resolve_user_model("tiny")
    cpu, gpu = load(path), load(path, device="cuda")
    assert gpu.batched  # batched decode is the default on a GPU
    a, b = cpu.new_session(), gpu.new_session()
    want, got = a.extend([1, 2, 3, 4, 5]), b.extend([1, 2, 3, 4, 5])
    assert got.device.type == "cuda"  # the logits stay on the device
    np.testing.assert_allclose(got.cpu().numpy(), want, atol=2e-3)


def test_batched_decode_on_the_device_equals_single_steps():
    path = resolve_user_model("tiny")
    single, batched = load(path, device="cuda", batched=False), load(path, device="cuda")
    pairs, _, _ = single_and_batched(single, batched, [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]], steps=4, first_id=50)
    for w, g in pairs:
        np.testing.assert_allclose(g.cpu().numpy(), w.cpu().numpy(), atol=2e-3)


def test_the_sampler_on_the_device_draws_from_the_reference_distribution():
    from test_sampling_kernel import chi_square_p, expected

    params = SamplingParams(1.0, 0.8)
    logits = np.log(PROBS).astype(np.float32)
    t = torch.tensor(logits, device="cuda")
    rng = rng_for(5, "gpu")
    draws = np.bincount([torch_sample(t, params, rng) for _ in range(5000)], minlength=len(logits))
    probs = expected(logits.astype(np.float64), params)
    assert draws[probs == 0].sum() == 0 and chi_square_p(draws, probs) > 1e-4


def test_a_campaign_on_the_device(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    rc = cli.main(["simulate", "--user", "tiny", "--assistant", "tiny", "--device", "cuda", "--limit", "4",
                   "--concurrency", "4", "--max-turns", "3", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 4
