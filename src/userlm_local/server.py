"""An OpenAI-compatible HTTP server for a local model (``userlm-local serve``).

``POST /v1/chat/completions`` (JSON or ``stream: true`` server-sent events),
``GET /v1/models``, ``GET /health``.  An assistant model answers as an
assistant, with its own chat template.  A UserLM answers with the next *user*
turn in the UserLM format; when the simulated user ends the conversation the
content is ``<|endconversation|>`` and ``finish_reason`` is ``"end_conversation"``.
Requests are served one at a time per model (the engines are single-stream).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .prompt_format import END_CONVERSATION


class ModelService:
    """What the handler calls: ``complete(messages, params) -> (content, finish_reason)``."""

    def __init__(self, path: str, *, as_user: bool | None = None, max_tokens: int = 256,
                 threads: int | None = None):
        from .backends import load_backend
        from .model_files import model_format

        self.path = path
        self.name = str(path).rstrip("/").split("/")[-1]
        extra = {"n_ctx": 4096} if model_format(path) == "gguf" else {}
        if threads is not None:
            extra["threads"] = threads
        self.backend = load_backend(path, allow_non_userlm=True, **extra)
        fmt = self.backend.fmt
        is_userlm = fmt is not None and fmt.ids.end_conversation is not None
        self.as_user = is_userlm if as_user is None else as_user
        self.max_tokens = max_tokens
        self.lock = threading.Lock()
        if not self.as_user:
            from .assistants.local import LocalAssistant

            self.assistant = LocalAssistant(self.backend, max_tokens=max_tokens)

    def complete(self, messages: list[dict], params: dict) -> tuple[str, str]:
        with self.lock:
            if self.as_user:
                return self._user_turn(messages, params)
            return self.assistant.reply(
                messages, temperature=float(params.get("temperature", 0.0) or 0.0),
                top_p=float(params.get("top_p", 1.0)),
                max_tokens=min(int(params.get("max_tokens") or self.max_tokens), self.max_tokens),
                seed=int(params.get("seed", 0) or 0)), "stop"

    def _user_turn(self, messages: list[dict], params: dict) -> tuple[str, str]:
        from .conversation import Conversation
        from .sampling import SamplingParams
        from .simulator import SimulatedUser, UserSimulator
        from .sampling import rng_for

        sampling = SamplingParams(temperature=float(params.get("temperature", 1.0)),
                                  top_p=float(params.get("top_p", 0.8)))
        sim = UserSimulator(self.backend, sampling=sampling,
                            max_new_tokens=min(int(params.get("max_tokens") or self.max_tokens), self.max_tokens))
        conv = Conversation.from_messages(self.backend.fmt, messages)
        if not hasattr(self, "session"):
            self.session = self.backend.new_session()
        user = SimulatedUser(sim, conv, self.session, rng_for(int(params.get("seed", 0) or 0), len(messages)))
        turn = user.next_turn()
        return (END_CONVERSATION, "end_conversation") if turn.ended else (turn.text, "stop")


def make_handler(service: ModelService):
    from .errors import UserError

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet by default
            pass

        def _json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._json(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [{"id": service.name, "object": "model",
                                                             "owned_by": "userlm-local"}]})
            elif self.path == "/health":
                self._json(200, {"status": "ok"})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(length) or b"{}")
                messages = req["messages"]
                if not isinstance(messages, list) or not all(
                        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                    raise ValueError("messages must be a list of {role, content} objects")
            except (ValueError, KeyError, json.JSONDecodeError) as exc:
                return self._error(400, f"bad request: {exc}")
            try:
                content, finish = service.complete(messages, req)
            except UserError as exc:
                return self._error(400, str(exc))
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
            if req.get("stream"):
                return self._stream(rid, created, content, finish)
            self._json(200, {
                "id": rid, "object": "chat.completion", "created": created, "model": service.name,
                "choices": [{"index": 0, "message": {"role": "assistant" if not service.as_user else "user",
                                                     "content": content}, "finish_reason": finish}],
            })

        def _stream(self, rid, created, content, finish):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            words = content.split(" ")
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            for i, piece in enumerate(pieces + [None]):
                delta = {"content": piece} if piece is not None else {}
                if i == 0:
                    delta["role"] = "assistant"
                chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": service.name,
                         "choices": [{"index": 0, "delta": delta,
                                      "finish_reason": finish if piece is None else None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def make_server(service: ModelService, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    return server
