"""The retry loop of our HTTP clients (the assistant over chat completions, the user model over
completions), and the deadline-bounded body read both use: exponential backoff on 429, 5xx, timeouts, refused and dropped connections and
malformed answers; 401/403 fail at once; the error after the last attempt lists every attempt's."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
from typing import Callable, TypeVar

T = TypeVar("T")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                  http.client.HTTPException, OSError)


def past(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("no complete answer within --timeout")


def read_body(resp, deadline: float) -> bytes:
    """The whole body, read as it arrives (``read1``), so a server that drips it slowly is cut
    off at ``deadline`` instead of holding the call."""
    chunks = []
    while True:
        past(deadline)
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def reason(exc: BaseException) -> str:
    r = getattr(exc, "reason", None)
    if isinstance(exc, (socket.timeout, TimeoutError)) or isinstance(r, (socket.timeout, TimeoutError)):
        return "timeout"
    return f"{type(exc).__name__}: {r or exc}"


def with_retries(call: Callable[[], T], *, retries: int, backoff: float, what: str,
                 error: Callable[[str], Exception], http_detail: Callable[[urllib.error.HTTPError], str] | None = None,
                 on_attempt: Callable[[], None] | None = None) -> T:
    """``call()``, tried ``retries + 1`` times at most; ``error(message)`` is raised when every
    attempt failed (``what`` names the call in it)."""
    errors: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        if on_attempt:
            on_attempt()
        try:
            return call()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise error(f"HTTP {exc.code}: API key rejected") from None
            errors.append(f"HTTP {exc.code}" + (f": {http_detail(exc)}" if http_detail else ""))
            if exc.code not in RETRY_STATUS:
                break
        except NETWORK_ERRORS as exc:
            errors.append(reason(exc))
        except ValueError as exc:  # a malformed answer
            errors.append(f"bad response: {exc}")
    raise error(f"{what} call failed after {len(errors)} attempt(s): {'; '.join(errors)}")
