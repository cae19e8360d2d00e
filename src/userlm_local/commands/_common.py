"""Arguments and loading shared by the verbs that take a user model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..util.errors import UserError


def not_empty(flag: str, value: str | None, hint: str = "") -> None:
    """An option given as '' (a shell variable that was not set) is refused, never read as "the default"."""
    if value is not None and not value.strip():
        raise UserError(f"{flag} is empty" + (f" ({hint})" if hint else ""))


MAX_NAME = 100


def check_name(flag: str, value: str | None) -> None:
    """A model name goes into file names, metadata and model cards: printable, no path separator,
    at most ``MAX_NAME`` characters (a 300-character or control-character --name was accepted)."""
    if value is None:
        return
    not_empty(flag, value)
    if len(value) > MAX_NAME:
        raise UserError(f"{flag} is {len(value)} characters long; at most {MAX_NAME}")
    if not value.isprintable() or "/" in value or "\\" in value:
        raise UserError(f"{flag} {value!r}: use printable characters without a path separator")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="UserLM checkpoint directory or GGUF file; 'tiny' for the bundled 6.8M test model "
                        "(default: the SmolLM2-135M UserLM, built once on first use)")
    p.add_argument("--allow-non-userlm", action="store_true",
                   help="accept a model without <|endconversation|> (it cannot end conversations)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (they can run code when loaded)")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, help="engine: torch (default for checkpoint directories)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="torch backend precision (default float32)")
    p.add_argument("--bos", action="store_true", help="start every conversation with <|begin_of_text|>")
    add_threads_argument(p)
    add_device_argument(p)


DEVICE_HELP = ("where the models run: cpu (default) or cuda[:N] (torch: a CUDA build of PyTorch; GGUF: "
               "llama-cpp-python built with CMAKE_ARGS=\"-DGGML_CUDA=on\", every layer offloaded)")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE", help=DEVICE_HELP)


def device_option(args) -> dict:
    """``{"device": ...}`` when not the CPU (checked for its form), else ``{}``."""
    d = getattr(args, "device", "cpu") or "cpu"
    if d == "cpu":
        return {}
    if not re.fullmatch(r"cuda(:\d+)?", d):
        raise UserError(f"--device {d}: use cpu or cuda[:N]")
    return {"device": d}


THREADS_HELP = ("CPU threads per local model (default: every core; torch uses 1 for models under 100M "
                "parameters)")


def add_threads_argument(p: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help=help)


def threads_option(args) -> dict:
    """``{"threads": N}`` when ``--threads`` was given (checked), else ``{}``."""
    n = getattr(args, "threads", None)
    if n is None:
        return {}
    if n < 1:
        raise UserError("--threads must be >= 1")
    return {"threads": n}


def model_path(args) -> Path:
    from ..defaults import resolve_user_model

    return resolve_user_model(args.model)


def load_user_backend(args):
    from ..runtime.backends import load_backend

    opts = dict(allow_non_userlm=args.allow_non_userlm, allow_pickle=args.allow_pickle,
                add_bos=getattr(args, "bos", False))
    if getattr(args, "dtype", None):
        opts["dtype"] = args.dtype
    opts.update(threads_option(args))
    opts.update(device_option(args))
    return load_backend(model_path(args), getattr(args, "backend", None), **opts)


def read_messages(path: str) -> list[dict]:
    """An OpenAI-format messages file: a JSON list, or an object with a "messages" list."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    from ..text.tokenizer import read_json

    data = read_json(p)  # bounded in size and depth, one line on every failure
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise UserError(f"{path}: expected a JSON list of {{\"role\", \"content\"}} messages")
    for n, m in enumerate(data, 1):
        if any(isinstance(v, str) and _lone_surrogate(v) for v in m.values()):
            raise UserError(f"{path}: message {n} holds a lone surrogate (an escaped \\ud800-\\udfff), "
                            "not valid Unicode")
    return data


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
