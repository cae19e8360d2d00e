"""Request bodies of the OpenAI API, checked field by field.

Every field a request may carry is read here, with OpenAI's defaults (temperature 1, top_p 1,
n 1, no stop, no seed, no logprobs) and OpenAI's ranges; a wrong type, a value out of range,
or a field this server cannot honour raises ``BadField`` naming it, which the app turns into a
400 JSON error.  Fields that do not change the output (``user``, ``metadata``, ``store``, ...)
are accepted and ignored, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_STOP = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20
IGNORED = {"model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier"}  # no effect on the output


class BadField(ValueError):
    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Params:
    """What one request asks of the engine (for every choice)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    stop_token_ids: list[int] = field(default_factory=list)  # vLLM's extension: more stop ids
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: logprob tokens as "token_id:N"


@dataclass
class ChatRequest:
    messages: list[dict]
    params: Params


@dataclass
class CompletionRequest:
    prompts: list[str | list[int]]  # each a text or token ids
    params: Params
    echo: bool = False


def _number(body: dict, name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:  # absent or null: OpenAI's default
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadField(name, f"'{name}' must be a number, got {type(v).__name__}")
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise BadField(name, f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadField(name, f"'{name}' must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise BadField(name, f"'{name}' must be {'between ' + str(lo) + ' and ' + str(hi) if hi else 'at least ' + str(lo)}, got {v}")
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadField(name, f"'{name}' must be true or false, got {type(v).__name__}")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadField("stop", "'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP:
        raise BadField("stop", f"'stop' takes at most {MAX_STOP} sequences, got {len(stops)}")
    return stops


def _logit_bias(body: dict, vocab: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadField("logit_bias", "'logit_bias' must be an object mapping token ids to biases")
    out = {}
    for k, b in v.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise BadField("logit_bias", f"'logit_bias': {k!r} is not a token id") from None
        if not 0 <= tid < vocab:
            raise BadField("logit_bias", f"'logit_bias': token id {tid} is outside the vocabulary (0..{vocab - 1})")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise BadField("logit_bias", f"'logit_bias': the bias of {k} must be a number in [-100, 100]")
        out[tid] = float(b)
    return out


def _common(body: dict, vocab: int, *, max_key: str) -> Params:
    if not isinstance(body, dict):
        raise BadField(None, f"the request body must be a JSON object, got {type(body).__name__}")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    max_tokens = _int(body, max_key, None, 1)
    if max_key != "max_tokens" and body.get("max_tokens") is not None:
        legacy = _int(body, "max_tokens", None, 1)
        max_tokens = legacy if max_tokens is None else max_tokens
    n = _int(body, "n", 1, 1, MAX_N)
    seed = _int(body, "seed", None, -(2 ** 63), 2 ** 64 - 1)
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not stream):
        raise BadField("stream_options", "'stream_options' is an object, and only allowed with 'stream': true")
    include_usage = bool(opts and _bool(opts, "include_usage"))
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                 for t in stop_ids):
        raise BadField("stop_token_ids", "'stop_token_ids' must be a list of token ids in the vocabulary")
    return Params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=n, stop=_stop(body),
                  seed=seed, logit_bias=_logit_bias(body, vocab), stream=stream, include_usage=include_usage,
                  stop_token_ids=stop_ids, tokens_as_ids=_bool(body, "return_tokens_as_token_ids"))


def _unsupported(body: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if body.get(name) not in (None, False, [], {}):
            raise BadField(name, f"'{name}' is not supported by this server")


def _neutral_only(body: dict, n: int) -> None:
    """Fields that change the output, accepted only at the value that changes nothing."""
    for name in ("frequency_penalty", "presence_penalty"):
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2 <= v <= 2:
            raise BadField(name, f"'{name}' must be a number from -2 to 2")
        if v != 0:
            raise BadField(name, f"'{name}' is not supported by this server (only 0)")
    best_of = body.get("best_of")
    if best_of is not None and (isinstance(best_of, bool) or not isinstance(best_of, int) or best_of != n):
        raise BadField("best_of", f"'best_of' is not supported by this server (only equal to n, {n})")
    if body.get("suffix") not in (None, ""):
        raise BadField("suffix", "'suffix' is not supported by this server")
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise BadField("user", "'user' must be a string")


def parse_chat(body, vocab: int, max_messages: int | None = None) -> ChatRequest:
    """The chat request; more than ``max_messages`` messages (the server passes its context
    length: every message takes at least one token) is refused before any is read."""
    params = _common(body, vocab, max_key="max_completion_tokens")
    _unsupported(body, ("tools", "functions", "tool_choice", "function_call", "response_format", "audio",
                        "modalities", "prediction", "web_search_options", "reasoning_effort", "verbosity"))
    _neutral_only(body, params.n)
    params.logprobs = _bool(body, "logprobs")
    params.top_logprobs = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if params.top_logprobs and not params.logprobs:
        raise BadField("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadField("messages", "'messages' must be a non-empty list of {role, content} objects")
    if max_messages is not None and len(messages) > max_messages:
        raise BadField("messages", f"'messages' has {len(messages)} messages; this model's context of {max_messages} "
                                   f"tokens cannot hold more than {max_messages}")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadField(where, f"'{where}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise BadField(f"{where}.role", f"'{where}.role' must be system, user or assistant, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadField(f"{where}.content", f"'{where}.content': only text parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadField(f"{where}.content", f"'{where}.content' must be a string")
        out.append({"role": role, "content": content})
    return ChatRequest(out, params)


def parse_completion(body, vocab: int) -> CompletionRequest:
    params = _common(body, vocab, max_key="max_tokens")
    _neutral_only(body, params.n)
    k = _int(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)  # OpenAI allows 5, vLLM 20
    params.logprobs, params.top_logprobs = k is not None, k or 0
    prompt = body.get("prompt")
    ok_ids = (lambda p: isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                                            and 0 <= t < vocab for t in p))
    if isinstance(prompt, str) or ok_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ok_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise BadField("prompt", "'prompt' must be a string, a list of token ids (each in the vocabulary), "
                                 "or a non-empty list of either")
    if any(p == "" for p in prompts):
        raise BadField("prompt", "'prompt' is empty")
    return CompletionRequest(prompts, params, echo=_bool(body, "echo"))


def check_known(body: dict, known: set[str]) -> None:
    """Unknown top-level fields are an error (a typo would otherwise be silently ignored)."""
    for name in body:
        if name not in known and name not in IGNORED:
            raise BadField(name, f"unknown field '{name}'")


CHAT_FIELDS = {"messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
               "logprobs", "top_logprobs", "logit_bias", "stream", "stream_options", "tools", "functions",
               "tool_choice", "function_call", "response_format", "audio", "modalities", "prediction",
               "web_search_options", "reasoning_effort", "verbosity", "stop_token_ids", "return_tokens_as_token_ids",
               "frequency_penalty", "presence_penalty"}
COMPLETION_FIELDS = {"prompt", "temperature", "top_p", "max_tokens", "n", "stop", "seed", "logprobs", "logit_bias",
                     "stream", "stream_options", "echo", "stop_token_ids", "return_tokens_as_token_ids",
                     "frequency_penalty", "presence_penalty", "best_of", "suffix"}
