"""Servers for tests: ``userlm-local serve`` started as a user would (a subprocess on a free
port: ``start_server``/``stop_server``), and small in-process fixture HTTP servers that stand in
for an endpoint or a fault-injecting proxy (``FixtureHandler`` with ``fixture_server``, or
``start_fixture_server``/``stop_fixture_server`` for one that outlives a ``with`` block)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class FixtureHandler(BaseHTTPRequestHandler):
    """A fixture endpoint's handler: HTTP/1.1 (keep-alive), no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_body(self, data: bytes, status: int = 200, ctype: str | None = "application/json") -> None:
        """One whole answer with its Content-Length (no Content-Type header when ``ctype`` is None).
        A client that stops reading (as it should past a size bound) ends the connection, quietly."""
        self.send_response(status)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def start_fixture_server(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """``handler`` served on a free 127.0.0.1 port from a daemon thread (each request on a daemon
    thread too, ThreadingHTTPServer's default): the server and its ``http://127.0.0.1:PORT``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop_fixture_server(httpd: ThreadingHTTPServer) -> None:
    """Stops accepting and closes the listening socket; requests still in their handlers are left to
    their daemon threads."""
    httpd.shutdown()
    httpd.server_close()


@contextmanager
def fixture_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``start_fixture_server`` for a ``with`` block: yields the URL, stops the server on exit."""
    httpd, url = start_fixture_server(handler)
    try:
        yield url
    finally:
        stop_fixture_server(httpd)
