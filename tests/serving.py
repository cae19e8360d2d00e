"""Starting ``userlm-local serve`` for a test, as a user would: a subprocess on a free port."""

from __future__ import annotations

import re
import subprocess
import sys


def start_server(*argv: str) -> tuple[subprocess.Popen, int]:
    """The server process and its port (read from the line it prints once it listens)."""
    proc = subprocess.Popen([sys.executable, "-m", "userlm_local.cli", "serve", *argv, "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
    assert m, line + proc.stderr.read()
    return proc, int(m.group(1))


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
