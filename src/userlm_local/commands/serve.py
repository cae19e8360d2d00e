"""``userlm-local serve``: an OpenAI-compatible HTTP server for a local model."""

from __future__ import annotations

import sys

from ..errors import UserError
from ._common import add_threads_argument, threads_option

HELP = "serve a local model (assistant or UserLM) on an OpenAI-compatible /v1/chat/completions endpoint"


def add_arguments(p) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory or GGUF file; 'tiny' for the bundled 6.8M assistant (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--as", dest="role", choices=("auto", "assistant", "user"), default="auto",
                   help="answer as the assistant, or as the simulated user (auto: user for a UserLM)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="most tokens per reply; a request may ask for fewer (default 256)")
    add_threads_argument(p)


def run(args) -> int:
    from ..defaults import resolve_assistant
    from ..server import ModelService, make_server

    path = resolve_assistant(args.model)
    as_user = None if args.role == "auto" else args.role == "user"
    service = ModelService(path, as_user=as_user, max_tokens=args.max_tokens, **threads_option(args))
    try:
        server = make_server(service, args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    host, port = server.server_address[:2]
    role = "user simulator" if service.as_user else "assistant"
    print(f"serving {service.name} as the {role} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
