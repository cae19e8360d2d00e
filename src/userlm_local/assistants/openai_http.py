"""An OpenAI-compatible ``/v1/chat/completions`` endpoint as the assistant.

Works with vLLM, Ollama, llama-server, ``userlm-local serve`` or a hosted API.
Retries with exponential backoff on 429, 5xx, timeouts, refused and dropped
connections (also mid-stream); 401/403 are configuration errors, reported once
by ``check()`` before a campaign starts.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request

from ..util.errors import UserError
from .base import AssistantBase, AssistantError, add_usage

from ..util.http_retry import MAX_REPLY_BYTES, loads, open_bounded, read_answer, too_large, with_retries


class OpenAIAssistant(AssistantBase):
    kind = "http"
    OPTIONS = ("model", "api_key_env", "timeout", "retries", "backoff", "stream", "temperature",
               "max_tokens", "system_prompt", "max_reply_bytes")

    def __init__(self, base_url: str, *, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, stream: bool = False,
                 temperature: float | None = None, max_tokens: int | None = 512,
                 system_prompt: str | None = None, max_reply_bytes: int = MAX_REPLY_BYTES):
        try:
            parts = urllib.parse.urlsplit(base_url)
            parts.port  # noqa: B018  (a bad port raises here)
        except ValueError as exc:
            raise UserError(f"{base_url}: not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"{base_url}: not an http(s) URL with a host")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.stream, self.temperature, self.max_tokens = stream, temperature, max_tokens
        self.system_prompt = system_prompt
        self.max_reply_bytes = max_reply_bytes
        self.model = model or ""
        self.sampling = {"temperature": temperature}  # None: the endpoint's default
        self.calls = 0
        self.usage: dict = {}  # key -> tokens the endpoint reported for it; None once a reply reported none
        self.stream_usage = True  # ask for the usage chunk when streaming, until the endpoint refuses it
        self.lock = threading.Lock()

    # -- HTTP -------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        return open_bounded(req, self.timeout)

    def check(self) -> None:
        """Fail early, with one line, on an unreachable URL or a rejected API key."""
        try:
            with self._request("/models") as resp:
                listing = loads(read_answer(resp) or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise UserError(f"{self.base_url}: the API key was rejected (HTTP {exc.code}); "
                                "set it in the environment variable named by --api-key-env") from None
            if exc.code == 404:
                return  # some servers have no /models; chat calls will tell
            raise UserError(f"{self.base_url}: HTTP {exc.code} from /models") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"{self.base_url}: cannot reach the endpoint ({reason})") from None
        except ValueError:  # not JSON, nested too deeply, past the size bound
            raise UserError(f"{self.base_url}: /models did not answer JSON: not an OpenAI-compatible API") from None
        data = listing.get("data") if isinstance(listing, dict) else None  # [] or {"data": 5}: no names
        if not self.model and isinstance(data, list):
            models = [m.get("id") for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
            if models:
                self.model = models[0]

    def forget(self, key: object) -> dict | None:
        with self.lock:  # the endpoint keeps no state of ours: only the usage it reported
            return self.usage.pop(key, None)

    def reply(self, messages: list[dict], key: object = None) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
        if self.system_prompt:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        body = {"model": self.model or "default", "messages": msgs, "stream": self.stream}
        if self.stream and self.stream_usage:
            body["stream_options"] = {"include_usage": True}  # the tokens it cost, in a last chunk
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens

        def call() -> tuple[str, tuple | None]:
            try:
                with self._request("/chat/completions", body) as resp:  # --timeout bounds the whole request
                    return (_read_stream if self.stream else _read_json)(resp, self.max_reply_bytes)
            except urllib.error.HTTPError as exc:
                if exc.code != 400 or "stream_options" not in body:
                    raise
                self.stream_usage = False  # a strict endpoint that knows no stream_options: without it
                del body["stream_options"]
                return call()

        text, usage = with_retries(call, retries=self.retries, backoff=self.backoff, what="assistant",
                                   error=AssistantError, on_attempt=self._count)
        with self.lock:
            known = self.usage.get(key, {}) is not None and usage is not None
            self.usage[key] = add_usage(self.usage.get(key), *usage) if known else None
        return text

    def _count(self) -> None:
        self.calls += 1



def _usage(data: dict) -> tuple[int, int, int | None] | None:
    """(prompt, completion, cached) tokens from an OpenAI ``usage`` object; None if absent or odd."""
    u = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(u, dict):
        return None
    prompt, completion = u.get("prompt_tokens"), u.get("completion_tokens")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (prompt, completion)):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return prompt, completion, cached if isinstance(cached, int) and not isinstance(cached, bool) else None


def _read_json(resp, limit: int = MAX_REPLY_BYTES) -> tuple[str, tuple | None]:
    data = loads(read_answer(resp, limit))
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message.content") from None
    if not isinstance(content, str):
        raise ValueError("content is not a string")
    return content, _usage(data)


def _delta_text(chunk) -> str:
    """The content of one streamed chunk; a chunk of another shape is a bad response (ValueError),
    never an AttributeError that would stop the campaign."""
    if not isinstance(chunk, dict):
        raise ValueError("a stream chunk is not a JSON object")
    choices = chunk.get("choices") or [{}]
    first = choices[0] if isinstance(choices, list) else None
    if not isinstance(first, dict):
        raise ValueError("a stream chunk's choices[0] is not an object")
    delta = first.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise ValueError("a stream chunk's content is not a string")
    return content or ""


def _read_stream(resp, limit: int = MAX_REPLY_BYTES) -> tuple[str, tuple | None]:
    parts, done, usage, total = [], False, None, 0
    while True:
        raw = resp.readline(limit + 1 - total)  # bounded: a line without end is never read whole
        if not raw:
            break
        total += len(raw)
        if total > limit:
            raise too_large(limit)
        if not raw.endswith(b"\n"):
            raise ConnectionError("stream cut mid-event")
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        chunk = loads(payload)
        parts.append(_delta_text(chunk))
        usage = _usage(chunk) or usage  # sent by servers asked for it, or that send it anyway
    if not done:
        raise ConnectionError("stream ended before [DONE]")
    return "".join(parts), usage
