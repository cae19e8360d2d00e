"""llama.cpp's CPU threads sleep at their barriers when a prefill-bound verb asks (``score``), unless the
user said otherwise; libgomp's default (spin first) elsewhere (issue 28: on shared cores the spin made
2 threads slower than 1, on idle ones sleeping halves decode; bench/prefill_speed.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")


def policy(passive: bool, **env) -> str:
    code = ("import os; import userlm_local.runtime.backends.llama_cpp as lc; "
            + ("lc.wait_passively(); " if passive else "")
            + "lc._llama(); print(os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_passive_when_asked_unless_the_user_chose():
    assert policy(False) == "None"  # libgomp's own default
    assert policy(True) == "PASSIVE"  # set before llama_cpp (and libgomp with it) loads
    assert policy(True, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_score_asks_for_it(tiny_model, monkeypatch):
    import userlm_local.runtime.backends.llama_cpp as lc
    from userlm_local.cli import main

    monkeypatch.setattr(lc, "OMP_WAIT_POLICY", None)
    assert main(["score", str(tiny_model), "--limit", "1", "--json"]) == 0
    assert lc.OMP_WAIT_POLICY == "PASSIVE"
