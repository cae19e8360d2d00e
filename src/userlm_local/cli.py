"""``userlm-local <verb>``: one dispatcher; each verb lives in ``commands/<verb>.py``.

A verb module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``.  A ``UserError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .util.errors import UserError
from .util.files import silence_stdout
from .util.interrupts import Terminated, sigterm_as_interrupt

VERBS = ("simulate", "chat", "prompt", "info", "serve", "score", "bench", "train", "convert", "eval")
OWN_SIGTERM = ("simulate", "serve")  # the campaign leaves at once (records are on disk); uvicorn shuts down


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="userlm-local", description="Run User LMs (user simulators) locally.")
    parser.add_argument("--version", action="version", version=f"userlm-local {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f".commands.{verb}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{verb}"):
                continue  # verb not built yet
            raise
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]  # the verb's own options, as typed
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        if args.verb in OWN_SIGTERM:
            return int(args.run(args) or 0)
        with sigterm_as_interrupt():
            return int(args.run(args) or 0)
    except UserError as exc:
        print(f"userlm-local {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"userlm-local {args.verb}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"userlm-local {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (| head): as a killed-by-SIGPIPE tool
        silence_stdout()
        return 141


if __name__ == "__main__":
    sys.exit(main())
