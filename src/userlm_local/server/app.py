"""The ASGI app (Starlette, served by uvicorn): the OpenAI routes over a ``ModelService``.

``POST /v1/chat/completions`` and ``POST /v1/completions`` (JSON, or server-sent events with
``stream: true``, tokens sent as they are sampled), ``GET /v1/models``, ``GET /health``.  A bad
field is a 400 JSON error naming it; a body slower than ``read_timeout`` a 408; a body over
``max_body`` a 413.  A client that goes away cancels its generation (streamed or not).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from ..util import jsonio
from .engine import ModelService
from .generation import Cancelled, Choice, Piece, TokenInfo
from .requests import (CHAT_FIELDS, COMPLETION_FIELDS, BadField, Params, check_known, parse_chat,
                       parse_completion)

MAX_BODY = 16 << 20


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
          code: str | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


def no_model(service: ModelService, name):
    """OpenAI's answer to a model it does not have: 404, code model_not_found, naming 'model'."""
    return error(404, f"no model {name!r} here (this server has {service.name!r}; GET /v1/models)", "model",
                 code="model_not_found")


async def read_json(request, read_timeout: float):
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise _Reply(error(413, f"the request body is {int(size)} bytes; at most {MAX_BODY} are accepted"))

    async def receive() -> bytes:  # counted as it arrives: a chunked body has no Content-Length
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > MAX_BODY:
                raise _Reply(error(413, f"the request body is over {MAX_BODY} bytes"))
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        body = await asyncio.wait_for(receive(), read_timeout)
    except asyncio.TimeoutError:
        raise _Reply(error(408, f"the request body did not arrive within {read_timeout:g} s")) from None
    try:
        value = jsonio.loads(body)
    except jsonio.TooDeep as exc:
        raise _Reply(error(400, f"the request body is not JSON this server reads ({exc})")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Reply(error(400, f"the request body is not JSON ({exc})")) from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _Reply(error(400, "the request has text that is not valid Unicode (a lone surrogate such as \\ud800)")) from None
    return value


class _Reply(Exception):
    def __init__(self, response):
        self.response = response


def logprobs_chat(infos: list[TokenInfo]) -> dict:
    return {"content": [{"token": i.token, "logprob": i.logprob, "bytes": i.bytes,
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in i.top]}
                        for i in infos], "refusal": None}


def logprobs_text(infos: list[TokenInfo], start: int = 0) -> dict:
    offsets, at = [], start
    for i in infos:
        offsets.append(at)
        at += len(i.token)
    return {"tokens": [i.token for i in infos], "token_logprobs": [i.logprob for i in infos],
            "top_logprobs": [{t: lp for t, lp, _ in i.top} for i in infos], "text_offset": offsets}


class Run:
    """The choices of one request, generating on the engine; pieces arrive on ``queue``."""

    def __init__(self, service: ModelService, prompts: list[list[int]], params: Params, *, chat: bool):
        self.service, self.prompts, self.params, self.chat = service, prompts, params, chat
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.client_gone = False
        self.futures: list = []
        self.submitted: list = []  # the engine's futures, recorded by the submitting thread

    async def start(self, limiter) -> None:
        """Submit every choice, each once a session slot is free; stops submitting as soon as the
        request is given up (the thread waiting for a slot is abandoned, and gives up within 0.1 s)."""
        import anyio.to_thread

        emit = (lambda piece: self.loop.call_soon_threadsafe(self.queue.put_nowait, piece))
        k = 0
        for prompt in self.prompts:
            for _ in range(self.params.n):
                if self.cancelled.is_set():
                    raise asyncio.CancelledError
                try:
                    fut = await anyio.to_thread.run_sync(self._start_one, prompt, k, emit, abandon_on_cancel=True,
                                                         limiter=limiter)
                except Cancelled:
                    raise asyncio.CancelledError from None
                fut.add_done_callback(lambda f, k=k: self.loop.call_soon_threadsafe(self.queue.put_nowait, k))
                self.futures.append(asyncio.wrap_future(fut, loop=self.loop))
                k += 1

    def _start_one(self, prompt, k, emit):
        fut = self.service.start(prompt, self.params, k, emit, self.cancelled, chat=self.chat)
        self.submitted.append(fut)  # before cancel() can miss it: cancel() sets the event, then reads this
        if self.cancelled.is_set():
            fut.cancel()
        return fut

    def cancel(self) -> None:
        self.cancelled.set()
        for f in list(self.submitted):
            f.cancel()
        for f in self.futures:
            f.cancel()

    def usage(self, choices: list[Choice]) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = sum(c.sampled for c in choices)  # every sampled id, a stop id included
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def watch_disconnect(request, run: Run) -> None:
    while not run.cancelled.is_set():
        if await request.is_disconnected():
            run.client_gone = True
            run.cancel()
            return
        await asyncio.sleep(0.25)


def make_app(service: ModelService, *, read_timeout: float = 30.0):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    limiters: list = []

    def waiting():
        """Threads that wait for a session slot: a pool of their own, so requests queued behind
        busy slots never take the threads tokenization and the other routes run on."""
        import anyio

        if not limiters:
            limiters.append(anyio.CapacityLimiter(64))
        return limiters[0]

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": service.created, "owned_by": "userlm-local",
             "max_model_len": service.context_length}]})

    async def tokenize(request):
        """vLLM's /tokenize: {"prompt": text} -> {"tokens", "count", "max_model_len"} (special tokens
        in the text are read as such; no BOS is added)."""
        try:
            body = await read_json(request, read_timeout)
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
                raise BadField("prompt", "'prompt' must be a string")
        except BadField as exc:
            return error(400, str(exc), exc.param)
        except _Reply as r:
            return r.response
        from starlette.concurrency import run_in_threadpool

        ids = await run_in_threadpool(service.tokenizer.encode_with_special, body["prompt"])
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": service.context_length})

    async def detokenize(request):
        try:
            body = await read_json(request, read_timeout)
            ids = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < service.vocab for t in ids):
                raise BadField("tokens", "'tokens' must be a list of token ids in the vocabulary")
        except BadField as exc:
            return error(400, str(exc), exc.param)
        except _Reply as r:
            return r.response
        return JSONResponse({"prompt": service.tokenizer.decode(ids)})

    async def health(request):
        return JSONResponse({"status": "ok", "role": "user" if service.as_user else "assistant", **service.stats,
                             "scheduler_rounds": service.scheduler.rounds,
                             "scheduler_max_batch": service.scheduler.max_batch})

    async def completions(request, chat: bool):
        from starlette.concurrency import run_in_threadpool

        try:
            body = await read_json(request, read_timeout)
            if isinstance(body, dict):
                check_known(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
                if body.get("model") not in (None, ""):
                    if not isinstance(body["model"], str):
                        raise BadField("model", "'model' must be a string")
                    if not service.serves(body["model"]):
                        return no_model(service, body["model"])
            req = parse_chat(body, service.vocab, max_messages=service.context_length) if chat else parse_completion(body, service.vocab)
            if chat and service.flipped and req.params.n > 1:
                raise BadField("n", "'n': a flipped-roles simulated user answers one turn at a time (n=1)")
            service.check_choices(1 if chat else len(req.prompts), req.params.n)
            if chat:
                prompts = [await run_in_threadpool(service.chat_prompt, req.messages)]
            else:
                if req.echo and req.params.logprobs:
                    raise BadField("echo", "'echo' with 'logprobs' is not supported by this server")
                prompts = [await run_in_threadpool(service.text_prompt, p) for p in req.prompts]
            for p in prompts:
                service.check_room(p, req.params, "messages" if chat else "prompt")
            service.check_tokens(len(prompts), req.params)
        except BadField as exc:
            return error(400, str(exc), exc.param)
        except _Reply as r:
            return r.response
        service.stats["requests"] += 1
        run = Run(service, prompts, req.params, chat=chat)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": service.name, "system_fingerprint": None}
        echo = [service.tokenizer.decode(p, skip_special=False) if getattr(req, "echo", False) else "" for p in prompts]
        if req.params.stream:
            return StreamingResponse(stream(run, head, chat, echo), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        watcher = asyncio.create_task(watch_disconnect(request, run))
        try:
            await run.start(waiting())
            choices = [await f for f in run.futures]
        except asyncio.CancelledError:
            run.cancel()
            if run.client_gone and not asyncio.current_task().cancelling():
                return Response(status_code=499)  # nobody reads it: the client went away
            raise
        except Exception as exc:  # noqa: BLE001 - the engine failed: a 500 that says why
            run.cancel()
            return error(500, f"generation failed: {exc}", kind="server_error")
        finally:
            run.cancelled.set()
            watcher.cancel()
        role = service.reply_role
        out = []
        for c in choices:
            if chat:
                content = service.reply_text(c.text, c.finish_reason == "end_conversation")
                out.append({"index": c.index, "message": {"role": role, "content": content, "refusal": None},
                            "logprobs": logprobs_chat(c.logprobs) if req.params.logprobs else None,
                            "finish_reason": c.finish_reason})
            else:
                pre = echo[c.index // req.params.n]
                out.append({"index": c.index, "text": pre + c.text,
                            "logprobs": logprobs_text(c.logprobs, len(pre)) if req.params.logprobs else None,
                            "finish_reason": c.finish_reason})
        return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion", "choices": out,
                             "usage": run.usage(choices)})

    async def stream(run: Run, head: dict, chat: bool, echo: list[str]):
        kind = "chat.completion.chunk" if chat else "text_completion"
        role = service.reply_role
        extra = {"usage": None} if run.params.include_usage else {}

        offsets: dict[int, int] = {}  # a completion's text_offset so far, per choice (echo included)

        def chunk(index: int, piece: str | None, info: TokenInfo | None = None, finish: str | None = None,
                  first: bool = False) -> str:
            if chat:
                delta = {} if piece is None else {"content": piece}
                if first:
                    delta = {"role": role, "content": piece or ""}
                ch = {"index": index, "delta": delta,
                      "logprobs": logprobs_chat([info]) if info else None, "finish_reason": finish}
            else:
                lp = None
                if info:
                    lp = logprobs_text([info], offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + len(info.token)
                ch = {"index": index, "text": piece or "", "logprobs": lp, "finish_reason": finish}
            return "data: " + json.dumps({**head, "object": kind, "choices": [ch], **extra}) + "\n\n"

        try:
            await run.start(waiting())
            total = len(run.futures)
            if chat:
                for k in range(total):
                    yield chunk(k, None, first=True)
            else:
                for k, pre in enumerate(echo[i // run.params.n] for i in range(total)):
                    offsets[k] = len(pre)
                    if pre:
                        yield chunk(k, pre)
            finished: dict[int, Choice] = {}
            while len(finished) < total:
                item = await run.queue.get()
                if isinstance(item, Piece):
                    yield chunk(item.index, item.text, item.info)
                    continue
                try:
                    c = await run.futures[item]  # its result lands just after this notice
                except Exception as exc:  # noqa: BLE001
                    yield "data: " + json.dumps({"error": {"message": f"generation failed: {exc}",
                                                           "type": "server_error"}}) + "\n\n"
                    return
                finished[item] = c
                finish = c.finish_reason
                if chat:  # what a whole reply would add: the end marker, or a never-empty turn
                    tail = service.reply_text(c.text, finish == "end_conversation")[len(c.text):]
                    if tail:
                        yield chunk(item, tail)
                yield chunk(item, None, finish=finish)
            if run.params.include_usage:
                yield "data: " + json.dumps({**head, "object": kind, "choices": [],
                                             "usage": run.usage(list(finished.values()))}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or we are done): stop generating
            run.cancel()

    async def not_found(request, exc):
        return error(404, f"no route {request.method} {request.url.path}", kind="not_found_error")

    async def not_allowed(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    async def chat(request):
        return await completions(request, True)

    async def text(request):
        return await completions(request, False)

    async def model(request):
        if not service.serves(request.path_params["name"]):
            return no_model(service, request.path_params["name"])
        return JSONResponse({"id": service.name, "object": "model", "created": service.created,
                             "owned_by": "userlm-local", "max_model_len": service.context_length})

    routes = [Route(p, models, methods=["GET"]) for p in ("/v1/models", "/models")]
    routes += [Route(p + "/{name:path}", model, methods=["GET"]) for p in ("/v1/models", "/models")]
    routes += [Route("/health", health, methods=["GET"]), Route("/tokenize", tokenize, methods=["POST"]),
               Route("/detokenize", detokenize, methods=["POST"])]
    for prefix in ("/v1", ""):
        routes += [Route(prefix + "/chat/completions", chat, methods=["POST"]),
                   Route(prefix + "/completions", text, methods=["POST"])]
    async def server_error(request, exc):  # a bug of ours: still JSON, and it says what failed
        return error(500, f"the server failed on this request ({type(exc).__name__}: {exc})", kind="server_error")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, Exception: server_error})
