"""An OpenAI-compatible server for a local model (``userlm-local serve``): ``engine.py`` (the
model, its scheduler, one generation per choice), ``requests.py`` (the request fields, checked),
``app.py`` (the ASGI routes), and ``serve`` here (uvicorn on a socket we bind, so port 0 works)."""

from __future__ import annotations

import socket
import sys

from .app import make_app
from .engine import ModelService

__all__ = ["ModelService", "bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (OSError when the address is taken or not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(service: ModelService, sock: socket.socket, *, read_timeout: float = 30.0,
          header_timeout: float | None = None, idle_timeout: float | None = None,
          max_connections: int | None = None) -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM), with the connection limits of
    ``guard.py`` (its defaults where one is None)."""
    try:
        import uvicorn

        from . import guard
    except ImportError:
        raise SystemExit("serve needs the 'serve' extra: pip install 'userlm-local[serve]'") from None

    limits = {"header_timeout": header_timeout or guard.HEADER_TIMEOUT, "idle_timeout": idle_timeout or guard.IDLE_TIMEOUT,
              "max_connections": max_connections or guard.MAX_CONNECTIONS}
    limits["max_connections"], note = guard.fit_descriptors(limits["max_connections"])
    # backlog: also how many connections asyncio accepts per wake-up (uvicorn's 2048 let a burst of
    # half-open connections take every descriptor before the cap could close one)
    config = uvicorn.Config(make_app(service, read_timeout=read_timeout), log_level="warning",
                            http=guard.guarded_protocol(**limits), timeout_keep_alive=limits["idle_timeout"],
                            timeout_graceful_shutdown=3, lifespan="off", backlog=guard.ACCEPT_BATCH)
    host, port = sock.getsockname()[:2]
    role = "user simulator" if service.as_user else "assistant"
    print(f"serving {service.name} as the {role} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    if note:
        print(note, file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
