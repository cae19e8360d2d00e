"""One high-level intent sentence per conversation (paper §2: "should not go into specific details").

Every intent starts with ``INTENT_PREFIX``.  The default writer (:func:`default_intent`) is local
and deterministic: it classifies the kind of request from keywords of the user turns and names
the topic with the most frequent content words across the user turns (stop words, request
verbs and code tokens removed).  It never copies the first user turn.  A writer is any callable
``Dialogue -> str`` (:class:`IntentWriter`); :class:`OpenAIIntentWriter` asks an
OpenAI-compatible server with the paper's few-shot prompt instead.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from typing import Protocol

from ..util.errors import UserError
from .dialogue import Dialogue
from .text import STOPWORDS

INTENT_PREFIX = "You are a user chatting with an assistant language model to"
WRITER_VERSION = "1"
MAX_TURN_CHARS = 5000  # the topic is read from the first 5000 characters of each user turn


class IntentWriter(Protocol):
    def __call__(self, dialogue: Dialogue) -> str: ...


# (kind, keywords or phrases, the intent's verb phrase with {topic}); order breaks ties.
KINDS: list[tuple[str, tuple[str, ...], str]] = [
    ("code", ("code", "function", "python", "javascript", "typescript", "java", "sql", "script", "program",
              "bug", "error", "compile", "api", "react", "html", "css", "regex", "class", "method", "def",
              "import", "npm", "docker", "database", "query", "c++", "c#", "golang", "rust", "php",
              "debug", "exception", "library", "framework", "implement", "algorithm", "json"),
     "get help with code involving {topic}"),
    ("translation", ("translate", "translation", "translated", "in english", "into english", "in spanish",
                     "in french", "in german", "in chinese", "in japanese", "in korean"),
     "get a translation of some text about {topic}"),
    ("math", ("solve", "equation", "calculate", "integral", "derivative", "probability", "math",
              "theorem", "proof", "formula", "matrix", "statistics"),
     "work through a math problem about {topic}"),
    ("summary", ("summarize", "summarise", "summary", "tl;dr", "key points", "main points"),
     "get a summary of some material about {topic}"),
    ("roleplay", ("act as", "pretend", "role play", "roleplay", "you are a", "you will be", "simulate"),
     "have the assistant play a role in a scenario about {topic}"),
    ("writing", ("write", "essay", "article", "blog", "story", "poem", "email", "letter", "rewrite",
                 "paraphrase", "draft", "caption", "post", "copy", "headline", "outline", "script",
                 "lyrics", "slogan", "description", "cover letter", "proofread", "edit"),
     "get help writing content about {topic}"),
    ("brainstorm", ("ideas", "brainstorm", "names for", "suggest", "suggestions", "list of", "come up with"),
     "brainstorm ideas related to {topic}"),
    ("advice", ("should i", "advice", "recommend", "tips", "how can i", "how do i", "what should",
                "best way", "strategy", "plan"),
     "get advice about {topic}"),
    ("explanation", ("explain", "what is", "what are", "why", "how does", "difference between",
                     "meaning", "define", "definition", "understand"),
     "understand {topic}"),
]
DEFAULT_PHRASE = "get information about {topic}"

# Words that say what kind of request it is, not what it is about.
REQUEST_WORDS = frozenset("""
write please make give explain code help want need like use using create also can could one get know tell
list following example examples thanks thank yes okay ok sure continue answer question questions provide
show generate based way something anything thing things new good well way ways more less much many
really still even just see look find try sure sorry hello hi hey chatgpt gpt assistant bot ai above below
text response reply message table part section version previous same different another each every
first second third last next now time times another rewrite summarize translate describe suggest
add change update remove fix below keep word words sentence sentences paragraph paragraphs format
i'm i'd don't can't it's let's shall may might must without within etc e.g i.e vs via per
main idea ideas point points bullet detail details simple short long great best important would specific
information content kind type types able including include related regarding whole full around already
always never ever since lot lots bit little sure correct right wrong true able possible other others
propose extract tell please pls thx hmm yeah yes nope okay using used uses make makes made give gives given want wants wanted
need needs needed write writes written wrote explain explains explained create creates created
""".split())

# Tokens that mostly come from pasted code.
CODE_WORDS = frozenset("""
const var let return self def import from function class public private static void int string str true
false null none new print http https www com org html div span src href async await else elif try catch
except finally lambda yield this props state export default require module include struct enum char
bool float double long println printf echo console log args kwargs len range dict self_ init
""".split())

_KIND_TOKEN = re.compile(r"[a-z0-9+#;]+")
_FENCE = re.compile(r"```.*?(```|$)", re.DOTALL)
_CODEY_LINE = re.compile(r"[;{}=<>()\[\]]")
_TOPIC_WORD = re.compile(r"[a-z][a-z'’-]*[a-z]")


def _prose(text: str) -> str:
    """The text without fenced code and without lines that look like code."""
    text = _FENCE.sub(" ", text)
    keep = [ln for ln in text.splitlines() if len(_CODEY_LINE.findall(ln)) < 2]
    return "\n".join(keep)


def request_kind(dialogue: Dialogue) -> str:
    """The kind of request (``KINDS`` names, or "information"), from keywords of the user turns."""
    turns = dialogue.user_turns()
    if not turns:
        return "information"
    scores: Counter[str] = Counter()
    for i, turn in enumerate(turns):
        toks = _KIND_TOKEN.findall(turn[:2000].lower())
        tokset, joined = set(toks), " " + " ".join(toks) + " "
        weight = 3 if i == 0 else 1
        for kind, keys, _ in KINDS:
            hits = sum(1 for k in keys if (f" {k} " in joined if " " in k else k in tokset))
            scores[kind] += weight * hits
    if not scores or max(scores.values()) == 0:
        return "information"
    best = max(scores.values())
    return next(kind for kind, _, _ in KINDS if scores[kind] == best)


def topic_words(dialogue: Dialogue, n: int = 3) -> list[str]:
    """The ``n`` most frequent content words across the user turns (ties: first occurrence)."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    pos = 0
    for turn in dialogue.user_turns():
        for w in _TOPIC_WORD.findall(_prose(turn[:MAX_TURN_CHARS]).lower().replace("’", "'")):
            pos += 1
            if (len(w) < 3 or len(w) > 30 or w in STOPWORDS or w in REQUEST_WORDS or w in CODE_WORDS
                    or "'" in w):
                continue
            counts[w] += 1
            first.setdefault(w, pos)
    # merge simple inflections (segment/segments/segmented) and show the most frequent form
    groups: dict[str, list[str]] = {}
    for w in counts:
        groups.setdefault(_stem(w), []).append(w)
    merged = []
    for forms in groups.values():
        total = sum(counts[w] for w in forms)
        shown = min(forms, key=lambda w: (-counts[w], first[w]))
        merged.append((total, min(first[w] for w in forms), shown))
    merged.sort(key=lambda x: (-x[0], x[1]))
    return [w for _, _, w in merged[:n]]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


FALLBACK_TOPIC = {"code": "a programming task", "math": "a math question",
                  "translation": "a short text", "summary": "a text they share"}


def _join(words: list[str], kind: str) -> str:
    if not words:
        return FALLBACK_TOPIC.get(kind, "a topic they have in mind")
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def default_intent(dialogue: Dialogue) -> str:
    """The local, deterministic intent: kind of request + salient topic words."""
    kind = request_kind(dialogue)
    phrase = next((p for k, _, p in KINDS if k == kind), DEFAULT_PHRASE)
    return f"{INTENT_PREFIX} {phrase.format(topic=_join(topic_words(dialogue), kind))}."


def strip_prefix(intent: str) -> str:
    """The intent without the fixed "You are a user chatting with ... to" prefix."""
    text = intent.strip()
    if text.lower().startswith(INTENT_PREFIX.lower()):
        text = text[len(INTENT_PREFIX):].strip()
    return text


# ---------------------------------------------------------------- LLM writer (paper §2)

FEW_SHOT_PROMPT = """You will be given a conversation between a user and an AI assistant. \
Summarize the user's intent in the conversation into one high-level sentence. \
The intent should not go into specific details: it should say what the user wants to achieve, \
not the exact content of their messages. \
It must start with "You are a user chatting with an assistant language model to".

Examples:

Conversation: [user] what are the best places to visit in algeria? [assistant] ... [user] which ones are near the coast?
Intent: You are a user chatting with an assistant language model to obtain some recommendations of places to see in Algeria.

Conversation: [user] does allertine make you gain weight [assistant] ... [user] what is the best way to lose 10 pounds
Intent: You are a user chatting with an assistant language model to get information about strategies for losing weight and the impact of certain drugs or medications on weight gain.

Conversation: [user] why did einstein say god does not play dice [assistant] ... [user] what did bohr think about it?
Intent: You are a user chatting with an assistant language model to understand how quantum mechanics challenges Einstein's determinism and get the perspective of different scientists on this.

Conversation: {conversation}

Reply with only the intent summary and nothing else."""


def render_for_prompt(dialogue: Dialogue, max_chars: int = 6000) -> str:
    text = " ".join(f"[{m['role']}] {m['content']}" for m in dialogue.messages)
    return text if len(text) <= max_chars else text[:max_chars] + " ..."


class OpenAIIntentWriter:
    """Writes intents with an OpenAI-compatible ``/v1/chat/completions`` endpoint (temperature 0)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0):
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") \
            + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env)
        self.timeout = timeout

    def __call__(self, dialogue: Dialogue) -> str:
        body = {
            "model": self.model, "temperature": 0,
            "messages": [{"role": "user",
                          "content": FEW_SHOT_PROMPT.format(conversation=render_for_prompt(dialogue))}],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
            text = reply["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(f"{self.url}: intent request failed ({exc})") from None
        text = text.strip().strip('"').splitlines()[0].strip() if text else ""
        if not text.lower().startswith(INTENT_PREFIX.lower()):
            text = f"{INTENT_PREFIX} {text[0].lower() + text[1:] if text else 'get some help'}"
        return text
