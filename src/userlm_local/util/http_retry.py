"""The retry loop of our HTTP clients (the assistant over chat completions, the user model over
completions) and the deadline-bounded request both use: exponential backoff on 429, 5xx, timeouts, refused and
dropped connections and malformed answers; 401/403 fail at once; the error after the last attempt lists every
attempt's.

``open_bounded`` is the one way they open a request: ``--timeout`` bounds the whole answer
(connecting, the status line and headers, the body, every streamed event), however slowly a
server drips it.  A socket timeout alone does not: it restarts with every byte that arrives.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator, TypeVar

from . import jsonio

T = TypeVar("T")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                  http.client.HTTPException, OSError)


class _Watch:
    """Shuts down every socket a request opened once ``seconds`` have passed."""

    def __init__(self, seconds: float):
        self.expired = False
        self.socks: list = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def add(self, sock) -> None:
        with self.lock:
            self.socks.append(sock)
            if self.expired:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def connection(self, cls):
        watch = self

        class Watched(cls):
            def connect(self):
                super().connect()
                watch.add(self.sock)

        return Watched


def _opener(watch: _Watch):
    class HTTP(urllib.request.HTTPHandler):
        def do_open(self, http_class, req, **kw):
            return super().do_open(watch.connection(http_class), req, **kw)

    class HTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class, req, **kw):
            return super().do_open(watch.connection(http_class), req, **kw)

    return urllib.request.build_opener(HTTP, HTTPS)


@contextlib.contextmanager
def open_bounded(req: urllib.request.Request, timeout: float) -> Iterator:
    """``urlopen(req)`` with the whole exchange bounded by ``timeout`` seconds: at the deadline
    the connection's socket is shut down, and whatever was waiting on it (or a body cut short)
    fails as ``TimeoutError``.  HTTP errors raise ``urllib.error.HTTPError`` as with urlopen."""
    watch = _Watch(timeout)
    watch.timer.start()
    try:
        with _opener(watch).open(req, timeout=timeout) as resp:
            yield resp
    except urllib.error.HTTPError:
        raise
    except BaseException:
        if watch.expired:
            raise TimeoutError("no complete answer within --timeout") from None
        raise
    finally:
        watch.timer.cancel()
    if watch.expired:  # the answer may have been read, cut short, before the failure showed
        raise TimeoutError("no complete answer within --timeout")


# The most bytes of one answer read from an endpoint (an assistant's reply, a user model's
# completion, a listing): a reply is text for a user to read (2,048 tokens are ~10 KB), so 8 MiB is
# generous; without a bound a hostile or broken endpoint's 300 MB reply grew a campaign to 24 GB
# before the kernel killed it.
MAX_REPLY_BYTES = 8 * 2**20


def too_large(limit: int) -> ValueError:
    return ValueError(f"the reply is larger than {limit / 2**20:g} MiB (--max-reply-mib)")


def read_answer(resp, limit: int = MAX_REPLY_BYTES) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes (a ``ValueError``, a bad response, past it or
    when the connection closed before the Content-Length it announced: ``read(n)`` returns what
    came, so a cut answer would otherwise reach the JSON parser as if whole)."""
    raw = resp.read(limit + 1)
    if len(raw) > limit:
        raise too_large(limit)
    announced = (resp.headers.get("Content-Length") or "").strip()
    if announced.isdigit() and len(raw) < int(announced):
        raise ValueError(f"the answer was cut short: {len(raw)} of the {int(announced)} bytes it announced")
    return raw


def loads(raw):
    """``json.loads`` whose every failure is a ``ValueError`` (a bad response the retry loop
    counts), a JSON nested past the parser's recursion included (``jsonio.loads``)."""
    return jsonio.loads(raw, what="the answer")


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
