"""Starting ``userlm-local serve`` for a test, as a user would: a subprocess on a free port."""

from __future__ import annotations

import re
import subprocess
import sys


def start_server(*argv: str, nofile: int | None = None) -> tuple[subprocess.Popen, int]:
    """The server process and its port (read from the line it prints once it listens); ``nofile``
    lowers its descriptor limit, set in the child itself before the CLI runs."""
    run = ["-m", "userlm_local.cli"]
    if nofile:
        run = ["-c", (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                      "sys.argv[0] = 'userlm-local'; runpy.run_module('userlm_local.cli', run_name='__main__')")]
    proc = subprocess.Popen([sys.executable, *run, "serve", *argv, "--port", "0"], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
    assert m, line + proc.stderr.read()
    return proc, int(m.group(1))


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
