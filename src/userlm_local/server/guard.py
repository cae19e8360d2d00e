"""The connection layer's limits: uvicorn's h11 protocol with a header timeout, an idle timeout and
a connection cap, and errors of the protocol itself as JSON like every other error of the server.

uvicorn alone keeps a connection that never finishes its headers open forever (a slowloris: two
clients holding 10,100 connections each reached the process's 20,000-descriptor limit and
``/health`` stopped answering).  Here:

* a request's headers must arrive within ``header_timeout`` seconds of its first byte (of the
  connection's opening for the first request), or the connection is answered 408 and closed;
* a connection with no request in flight is closed after ``idle_timeout`` seconds of silence;
* at most ``max_connections`` are open: a new one beyond that closes the connection that has been
  quiet the longest among those with no request in flight (a half-open connection costs its holder
  as much as ours, so a flood of them evicts itself and a real client still gets in); only when
  every open connection has a request in flight is the new one answered 503 and closed.
"""

from __future__ import annotations

import json
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 15.0
MAX_CONNECTIONS = 256
ACCEPT_BATCH = 32  # connections accepted per wake-up of the listening socket (and its backlog)
RESERVE = 128  # descriptors kept for the model, the runtime and one accept batch


def fit_descriptors(max_connections: int) -> tuple[int, str | None]:
    """The connection cap (and a note saying why, if it changed), lowered where the process may not open that many descriptors (its
    soft limit raised to the hard one first, as servers do): a cap the process cannot reach
    would not protect it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and max_connections > soft - RESERVE:
        fitted = max(8, soft - RESERVE)
        return fitted, f"--max-connections {max_connections} lowered to {fitted}: this process may open {soft} files"
    return max_connections, None


def json_error(status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def guarded_protocol(*, header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                     max_connections: int = MAX_CONNECTIONS) -> type:
    """An ``H11Protocol`` class with these limits (uvicorn's ``Config(http=...)``)."""

    class Guarded(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = idle_timeout
            self._header_timer = None
            self.last_active = time.monotonic()

        # -- a connection arrives: make room, or refuse it -------------------------------------
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            open_now = sum(1 for p in self.connections if not p.transport.is_closing())
            if open_now > max_connections and not self._evict_one():
                self._reply(503, f"the server has {max_connections} connections open, each with a request "
                                 f"in flight; try again later", kind="server_busy")
                return
            self._start_header_timer()

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _evict_one(self) -> bool:
            quiet = [p for p in self.connections if p is not self and not p._busy()
                     and not p.transport.is_closing()]
            if not quiet:
                return False
            victim = min(quiet, key=lambda p: p.last_active)
            victim._close()
            return True

        # -- headers must arrive in time --------------------------------------------------------
        def _start_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._header_deadline)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing() and not self._busy():
                self._reply(408, f"the request's headers did not arrive within {header_timeout:g} s")

        def data_received(self, data: bytes) -> None:
            self.last_active = time.monotonic()
            if self.conn.their_state is h11.IDLE:  # a request begins (or goes on): its headers are timed
                self._start_header_timer()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._stop_header_timer()

        def on_response_complete(self) -> None:
            self.last_active = time.monotonic()
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        # -- errors of the protocol, as JSON ----------------------------------------------------
        def send_400_response(self, msg: str) -> None:
            self._reply(400, f"not an HTTP request this server reads ({msg.rstrip('.')})")

        def _reply(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._stop_header_timer()
            if self.transport.is_closing():
                return
            body = json_error(status, message, kind)
            head = (f"HTTP/1.1 {status} {h11_reason(status)}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
            self.transport.write(head + body)
            self._close()

        def _close(self) -> None:
            self._stop_header_timer()
            self._unset_keepalive_if_required()
            self.transport.close()

    return Guarded


def h11_reason(status: int) -> str:
    import http

    return http.HTTPStatus(status).phrase
