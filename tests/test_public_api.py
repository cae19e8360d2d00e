"""The public API: every name ``userlm_local`` exports resolves, importing it stays cheap, and the
README's Python example runs as written (on the bundled tiny UserLM instead of UserLM-8b)."""

import re
import subprocess
import sys
from pathlib import Path

import userlm_local

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_exported_name_resolves():
    missing = [n for n in userlm_local.__all__ if getattr(userlm_local, n, None) is None]
    assert not missing
    assert sorted(dir(userlm_local)) == sorted(userlm_local.__all__)


def test_importing_the_package_loads_no_engine():
    code = ("import sys, userlm_local; from userlm_local import UserSimulator, load_backend; "
            "print(sorted(m for m in ('torch', 'llama_cpp', 'onnxruntime_genai', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_python_example_runs(tiny_model):
    block = re.search(r"### In Python\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its 'In Python' example"
    code = block.group(1).replace('"path/to/UserLM-8b"', repr(str(tiny_model)))
    assert str(tiny_model) in code  # the example still loads a model by path
    # the 6.8 M model writes few turns that pass the paper's guardrails (3-25 words, ...): without them
    # its first turn (seed 0) is an ordinary one, and the example's add_assistant follows it
    code = code.replace("Guardrails.paper()", "Guardrails.none()")
    code += "\nassert turn.outcome in ('ok', 'ended') and user.conversation.tokens\nprint('ran')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ran")
