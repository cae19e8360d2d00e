"""``userlm-local serve``: an OpenAI-compatible HTTP server for a local model."""

from __future__ import annotations

import math

from ..util.errors import UserError
from ._common import add_device_argument, add_threads_argument, device_option, threads_option

HELP = "serve a local model (assistant or UserLM) on OpenAI-compatible /v1/chat/completions and /v1/completions"


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory, GGUF file or ONNX directory; 'smollm2' (the default: SmolLM2-135M-Instruct) "
                        "or 'tiny' for the bundled assistants, 'default' for the default UserLM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--as", dest="role", choices=("auto", "assistant", "user"), default="auto",
                   help="answer as the assistant, or as the simulated user (auto: user for a UserLM)")
    p.add_argument("--roles", choices=("native", "flipped"), default="native",
                   help="with --as user: flipped takes requests as tau2-bench, tau-bench and openevals' LLM user send "
                        "them (the harness's system prompt, the simulated user's own past turns as 'assistant') and "
                        "answers in the 'assistant' slot")
    p.add_argument("--end-text", default=None, metavar="TEXT",
                   help="what a user turn says when the user ends the conversation (default: ###STOP### with "
                        "--roles flipped, as tau2-bench expects; <|endconversation|> otherwise)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="tokens per reply when a request does not say (default 256); a request may ask for "
                        "up to the model's context")
    p.add_argument("--parallel", type=int, default=8,
                   help="generations at once, batched on the engine (default 8); more requests wait their turn")
    p.add_argument("--n-ctx", type=int, default=4096, help="context of a GGUF model (default 4096)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive (default 30)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a request's headers may take to arrive; a slower connection gets a 408 and is closed "
                        "(default 10)")
    p.add_argument("--idle-timeout", type=float, default=15.0,
                   help="seconds a connection with no request in flight may stay silent (default 15)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="connections open at once (default 256); beyond that the quietest idle one is closed, or the "
                        "new one gets a 503 when every one has a request in flight")
    p.add_argument("--max-choices", type=int, default=32,
                   help="prompts x n of one request (default 32); more is a 400 naming 'prompt' or 'n'")
    p.add_argument("--max-request-tokens", type=int, default=65536,
                   help="tokens one request may ask to generate, all its choices together (default 65536); more is a "
                        "400 naming 'max_tokens'")
    add_threads_argument(p)
    add_device_argument(p)


def run(args) -> int:
    from ..defaults import resolve_assistant, resolve_user_model
    from ..server import ModelService, bind, serve

    for name in ("max_tokens", "parallel", "n_ctx", "max_connections", "max_choices", "max_request_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("read_timeout", "header_timeout", "idle_timeout"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a number of seconds > 0")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("serve needs the 'serve' extra: pip install 'userlm-local[serve]'") from None
    try:
        sock = bind(args.host, args.port)  # before the model loads: a taken port fails fast
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    if args.roles == "flipped" and args.role == "assistant":
        raise UserError("--roles flipped serves a simulated user: use it with --as user (or auto and a UserLM)")
    if args.end_text is not None and not args.end_text.strip():
        raise UserError("--end-text must not be empty (a harness reads it to know the user ended)")
    wants_user = args.role == "user" or args.roles == "flipped"
    if args.model == "default" or (args.model is None and wants_user):  # the default UserLM
        path = resolve_user_model("default")
    else:
        path = resolve_assistant(args.model)
    as_user = True if wants_user else None if args.role == "auto" else False
    flipped = args.roles == "flipped"
    service = ModelService(path, as_user=as_user, max_tokens=args.max_tokens, parallel=args.parallel,
                           n_ctx=args.n_ctx, flipped=flipped, max_choices=args.max_choices,
                           max_request_tokens=args.max_request_tokens, aliases=(args.model,) if args.model else (),
                           end_text=args.end_text or ("###STOP###" if flipped else None),
                           **threads_option(args), **device_option(args))
    try:
        serve(service, sock, read_timeout=args.read_timeout, header_timeout=args.header_timeout,
              idle_timeout=args.idle_timeout, max_connections=args.max_connections)
    finally:
        service.close()
        sock.close()
    return 0
