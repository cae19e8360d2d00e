"""llama.cpp's CPU threads spin only briefly at their barriers (GOMP_SPINCOUNT=10000) unless the user
chose a wait policy (issue 28: on shared cores libgomp's long default spin made 2 threads slower than 1;
sleeping at once halved decode on idle ones; bench/prefill_speed.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")


def policy(**env) -> str:
    code = ("import os; import userlm_local.runtime.backends.llama_cpp as lc; lc._llama(); "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_short_spin_unless_the_user_chose():
    assert policy() == "10000 None"  # set before llama_cpp (and libgomp with it) loads
    assert policy(OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"
    assert policy(GOMP_SPINCOUNT="0") == "0 None"
