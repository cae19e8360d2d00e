"""Conversations rendered in the UserLM prompt format, for the importance matrix and the
conversion-time logit checks.

The importance matrix should see what the model sees at run time: an intent as the system
message, alternating user/assistant turns, the open user header.  ``calibration_ids`` takes
training-split conversations from ``userlm_local.data`` when that data is installed, else
(or when asked) the small built-in set below.
"""

from __future__ import annotations

from ..data import load_dialogues
from ..text.conversation import Conversation
from ..text.prompt_format import ChatFormat
from ..util.errors import UserError

BUILTIN = [
    ("You are a user chatting with an assistant language model to get help writing a Python function "
     "that merges two sorted lists.",
     ["hey can you write me a python function that merges two sorted lists",
      "Sure! Here is a simple approach using two pointers:\n\n```python\ndef merge(a, b):\n    i = j = 0\n"
      "    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n"
      "        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n```",
      "what's the time complexity of that",
      "It runs in O(n + m) time, where n and m are the lengths of the two lists, and uses O(n + m) extra space."]),
    ("You are a user chatting with an assistant language model to plan a three-day trip to Kyoto in autumn.",
     ["I'm going to Kyoto for 3 days in November, what should I see?",
      "November is a great time: the maples turn red. Day 1: Fushimi Inari early, then Kiyomizu-dera and "
      "the Higashiyama streets. Day 2: Arashiyama bamboo grove, Tenryu-ji, Okochi Sanso. Day 3: Eikan-do "
      "and the Philosopher's Path, then Nishiki Market.",
      "is it going to be really crowded? I hate crowds",
      "Popular spots are busy in peak foliage season (mid to late November). Go right at opening time, "
      "visit smaller temples such as Tofuku-ji's sub-temples, and avoid weekends if you can."]),
    ("You are a user chatting with an assistant language model to understand why the sky is blue.",
     ["why is the sky blue", "Sunlight is scattered by the molecules in the air. Shorter (blue) wavelengths "
      "scatter much more than longer (red) ones — this is Rayleigh scattering, proportional to 1/λ⁴.",
      "then why are sunsets red?", "At sunset the light crosses far more atmosphere, so most of the blue is "
      "scattered away before it reaches you, leaving the reds and oranges."]),
    ("You are a user chatting with an assistant language model to get a polite email declining a job offer.",
     ["can u help me write an email turning down a job offer, i want to keep it nice",
      "Of course. Subject: Job offer — thank you\n\nDear Ms. Rivera,\n\nThank you very much for offering me "
      "the Data Analyst position. After careful thought, I have decided to accept another role that fits my "
      "current goals more closely. I truly appreciated meeting the team and hope our paths cross again.\n\n"
      "Best regards,\nSam",
      "make it shorter"]),
    ("You are a user chatting with an assistant language model to solve a math word problem about trains.",
     ["Two trains leave stations 300 km apart at 9:00, one at 80 km/h and the other at 70 km/h toward each "
      "other. When do they meet?",
      "Their closing speed is 80 + 70 = 150 km/h, so they meet after 300 / 150 = 2 hours, at 11:00.",
      "and how far from the first station?",
      "The first train travels 80 km/h × 2 h = 160 km from its station."]),
    ("You are a user chatting with an assistant language model to translate a few phrases into Spanish, "
     "French and Chinese.",
     ["how do you say 'where is the train station' in spanish, french and chinese",
      "Spanish: ¿Dónde está la estación de tren?\nFrench: Où est la gare ?\nChinese: 火车站在哪里？(Huǒchēzhàn zài nǎlǐ?)",
      "and 'thank you very much'?",
      "Spanish: Muchas gracias. French: Merci beaucoup. Chinese: 非常感谢 (fēicháng gǎnxiè)."]),
    ("You are a user chatting with an assistant language model to debug a SQL query that returns duplicates.",
     ["my query returns duplicate rows: SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id",
      "Each user appears once per order, so users with several orders repeat. If you want one row per user, "
      "aggregate: SELECT u.name, SUM(o.total) FROM users u JOIN orders o ON u.id = o.user_id GROUP BY u.name;",
      "ok but i also need users with no orders",
      "Use a LEFT JOIN and COALESCE: SELECT u.name, COALESCE(SUM(o.total), 0) FROM users u LEFT JOIN orders o "
      "ON u.id = o.user_id GROUP BY u.name;"]),
    ("You are a user chatting with an assistant language model to get ideas for a 7-year-old's birthday party.",
     ["need ideas for my son's 7th birthday, he loves dinosaurs",
      "A dinosaur dig! Bury plastic fossils in a sandbox, make 'dino egg' piñatas, serve volcano cupcakes, "
      "and play 'pin the tail on the T-rex'. Goody bags with small figurines and stickers work well.",
      "budget is like $100 for 12 kids", "That's about $8 per child: make decorations yourself, bake the "
      "cupcakes, and buy fossils and figurines in bulk packs online."]),
]


def builtin_conversations() -> list[list[dict]]:
    """The built-in set as OpenAI-format message lists (system intent first)."""
    out = []
    for intent, turns in BUILTIN:
        msgs = [{"role": "system", "content": intent}]
        msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        out.append(msgs)
    return out


def render(fmt: ChatFormat, messages: list[dict]) -> list[int]:
    """Token ids of a conversation up to the open user header (the model's input)."""
    return Conversation.from_messages(fmt, messages).tokens


def _train_conversations(n: int) -> list[list[dict]]:
    out = []
    for d in load_dialogues("train", limit=n):
        msgs = [{"role": "system", "content": d.intent}] if d.intent.strip() else []
        out.append(msgs + [dict(m) for m in d.messages])
    return out


# Generic text, for comparison with the user-turn calibration: the documentation of Python's
# standard library (English technical prose, on every machine), as plain text with no chat template.
GENERIC_MODULES = ("os", "re", "json", "collections", "itertools", "functools", "pathlib", "argparse", "logging",
                   "subprocess", "threading", "datetime", "decimal", "fractions", "statistics", "random",
                   "textwrap", "string", "unittest", "csv", "sqlite3", "zipfile", "tarfile", "shutil",
                   "tempfile", "heapq", "bisect", "inspect", "typing", "dataclasses", "enum", "socket")


def generic_text() -> str:
    import importlib
    import inspect

    parts = []
    for name in GENERIC_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == name:
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def generic_ids(fmt: ChatFormat, n: int, max_tokens: int) -> list[list[int]]:
    ids = fmt.tokenizer.encode(generic_text())
    return [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)][:n]


def calibration_ids(fmt: ChatFormat, *, source: str = "auto", n: int = 64,
                    max_tokens: int = 512) -> tuple[list[list[int]], str]:
    """Rendered calibration conversations, each cut to ``max_tokens``, and where they came from."""
    if source not in ("auto", "train", "builtin", "generic"):
        raise UserError(f"unknown calibration source {source!r} (auto, train, builtin or generic)")
    if source == "generic":
        return generic_ids(fmt, n, max_tokens), "generic text (Python standard library documentation)"
    convs, origin = None, "builtin"
    if source in ("auto", "train"):
        try:
            convs, origin = _train_conversations(n), "train split (userlm_local.data)"
        except (UserError, ImportError) as exc:
            if source == "train":
                raise UserError(f"calibration data: {exc}") from None
    if convs is None:
        convs = builtin_conversations()[:n]
    ids = []
    for msgs in convs:
        try:
            toks = render(fmt, msgs)
        except UserError:
            continue  # a malformed conversation is skipped, not fatal
        ids.append(toks[:max_tokens])
    if not ids:
        raise UserError("no usable calibration conversations")
    return ids, origin
