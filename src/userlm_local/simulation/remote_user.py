"""A UserLM served by an OpenAI-compatible *completions* endpoint (vLLM, SGLang, llama-server,
``userlm-local serve``), driven with token ids.

Generic chat endpoints render an ``assistant`` header where a UserLM needs the open ``user``
header, so we render the UserLM prompt ourselves with a local copy of the model's tokenizer
(``--user-tokenizer``: a checkpoint directory or a GGUF with the same vocabulary) and send the
ids as the prompt.  A turn is two requests on the same prefix (which the engine's prefix cache,
vLLM APC or SGLang's radix tree, serves without a second prefill):
1. the prompt plus the teacher-forced ``\\n``, one token, with the first-token bans as
   ``logit_bias`` -100 and the top log-probs: P(end) is read there (``None`` when
   ``<|endconversation|>`` is not among the ids returned);
2. the rest of the turn, from the prompt plus ``\\n`` and that token, stopping on the format's
   stop ids (``stop_token_ids``); the ids come back as ``token_id:N`` (vLLM's
   ``return_tokens_as_token_ids``), so history is never re-tokenized.

A guardrail redraw is a new pair of requests on the same prefix.  At start, ``check`` compares
the server's vocabulary with the local tokenizer (``/tokenize`` where it exists, and a
``logit_bias`` probe at the last id and one past it) and refuses a mismatch.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request

from ..assistants.base import AssistantError
from ..runtime.backends import load_tokenizer
from ..runtime.sampling import SamplingParams, rng_for
from ..text.conversation import Conversation
from ..text.prompt_format import chat_format
from ..util.errors import UserError
from ..util.http_retry import MAX_REPLY_BYTES, loads, open_bounded, read_answer, with_retries
from .guardrails import Draft, Guardrails, first_token_ids, redraw
from .user import ENDED, EXHAUSTED, OK, Turn, UserSimulator, check_setup

TOP_LOGPROBS = 20
PROBE_TEXT = "Hello there! Could you help me plan a trip to Kyoto? <|endconversation|>"


class RemoteError(AssistantError):
    """The user-model endpoint failed after its retries."""


class RemoteUserModel:
    """The endpoint, the local tokenizer that renders prompts, and the sampling settings."""

    def __init__(self, base_url: str, tokenizer_path: str, *, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, sampling: SamplingParams = SamplingParams(1.0, 0.8),
                 guardrails: Guardrails = Guardrails.none(), max_new_tokens: int = 96,
                 context_length: int | None = None, max_reply_bytes: int = MAX_REPLY_BYTES):
        self.base_url = base_url.rstrip("/")
        self.max_reply_bytes = max_reply_bytes
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.root = self.base_url[: -len("/v1")]
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.model = model or ""
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        check_setup(sampling, guardrails, max_new_tokens)
        self.sampling, self.guardrails, self.max_new_tokens = sampling, guardrails, max_new_tokens
        tok = load_tokenizer(tokenizer_path)
        self.fmt = chat_format(tok)
        if self.fmt is None or self.fmt.ids.end_conversation is None:
            raise UserError(f"{tokenizer_path}: not a UserLM tokenizer (no <|endconversation|> token)")
        self.tokenizer, self.tokenizer_path = tok, tokenizer_path
        self.vocab = tok.vocab_size
        self.context_length = context_length or 2048
        self.bans = sorted(first_token_ids(self.fmt)) if guardrails.first_token_ban else []
        self.calls = 0

    # -- HTTP ---------------------------------------------------------------------------------
    def _post(self, url: str, body: dict | None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers,
                                     method="GET" if body is None else "POST")
        with open_bounded(req, self.timeout) as resp:  # bounds the whole answer
            return loads(read_answer(resp, self.max_reply_bytes))  # bounded: a hostile server's endless answer is not held

    def _call(self, body: dict) -> dict:
        """POST /completions with retries and backoff; RemoteError after the last one."""
        def call() -> dict:
            out = self._post(self.base_url + "/completions", {"model": self.model or "default", **body})
            if not isinstance(out, dict) or not out.get("choices"):
                raise ValueError("no choices in the answer")
            return out

        return with_retries(call, retries=self.retries, backoff=self.backoff, what="user model",
                            error=lambda m: RemoteError(m if " call failed " in m else f"user model: {m}"),
                            http_detail=_message, on_attempt=self._count)

    def _count(self) -> None:
        self.calls += 1

    # -- the start-up check -------------------------------------------------------------------
    def check(self) -> None:
        """Reachable, the model named, the context known, and the same vocabulary as ours."""
        try:
            listing = self._post(self.base_url + "/models", None)
        except urllib.error.HTTPError as exc:
            raise UserError(f"{self.base_url}: HTTP {exc.code} from /models") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise UserError(f"{self.base_url}: cannot reach the user model ({getattr(exc, 'reason', exc)})") from None
        data = listing.get("data") if isinstance(listing, dict) else None  # [] or {"data": 5}: no names
        models = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if not self.model and models:
            self.model = models[0].get("id", "")
        card = next((m for m in models if m.get("id") == self.model), models[0] if models else {})
        if isinstance(card.get("max_model_len"), int):
            self.context_length = card["max_model_len"]
        ids = self.tokenizer.encode_with_special(PROBE_TEXT)
        try:
            theirs = self._post(self.root + "/tokenize", {"model": self.model, "prompt": PROBE_TEXT,
                                                          "add_special_tokens": False})
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
            theirs = None  # no /tokenize here: the logit_bias probe alone decides
        if isinstance(theirs, dict) and isinstance(theirs.get("tokens"), list) and theirs["tokens"] != ids:
            raise UserError(f"{self.base_url}: the server's tokenizer differs from --user-tokenizer "
                            f"({len(theirs['tokens'])} vs {len(ids)} ids for the same text)")
        for tid, ok in ((self.vocab - 1, True), (self.vocab, False)):
            body = {"model": self.model, "prompt": ids[:4], "max_tokens": 1, "logit_bias": {str(tid): 0}}
            try:
                self._post(self.base_url + "/completions", body)
                accepted = True
            except urllib.error.HTTPError as exc:
                if exc.code != 400:
                    raise UserError(f"{self.base_url}: HTTP {exc.code} on a completions probe: {_message(exc)}") from None
                accepted = False
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                raise UserError(f"{self.base_url}: completions probe failed ({getattr(exc, 'reason', exc)})") from None
            if accepted != ok:
                raise UserError(f"{self.base_url}: the served model's vocabulary is not {self.vocab} ids "
                                f"(token id {tid} {'refused' if ok else 'accepted'}); refusing a different model")

    def close(self) -> None:
        """Nothing to free here: the server holds the model (the local backends' protocol)."""

    # -- one turn ------------------------------------------------------------------------------
    def turn(self, tokens: list[int], earlier: list[str], intent: str | None, seed: int) -> tuple[Turn, list[int] | None]:
        """The next user turn after ``tokens`` (the conversation, ending with the open user
        header), and the sampled ids the conversation records (``None`` when the guardrails
        ran out of redraws)."""
        ids, g, t0 = self.fmt.ids, self.guardrails, time.perf_counter()
        end_ban = {str(ids.end_conversation): -100} if g.end_token_ban else {}
        calls = decoded = 0

        def draft(attempt: int):
            nonlocal calls, decoded
            s = seed + attempt
            first = self._call({"prompt": tokens + [ids.newline], "max_tokens": 1, "seed": s,
                                "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                                "logit_bias": {**{str(b): -100 for b in self.bans}, **end_ban},
                                "logprobs": TOP_LOGPROBS, "return_tokens_as_token_ids": True,
                                "stop_token_ids": sorted(ids.stop_ids)})
            calls += 1
            tok, top = _first_token(first)
            body = [ids.newline, tok]
            if tok not in ids.stop_ids and self.max_new_tokens > 2:
                rest = self._call({"prompt": tokens + body, "max_tokens": self.max_new_tokens - 2, "seed": s,
                                   "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                                   "logit_bias": end_ban, "logprobs": 0, "return_tokens_as_token_ids": True,
                                   "stop_token_ids": sorted(ids.stop_ids)})
                calls += 1
                body += _token_ids(rest)
            decoded += len(body) - 1  # as a local turn counts: every draft's sampled ids but the last
            stop = body[-1] if body[-1] in ids.stop_ids else None
            # P(end) of the first draft only: a redraw's first token is drawn under the same prompt
            return Draft(body, self.tokenizer.decode(body[1:-1] if stop is not None else body[1:]), stop,
                         _prob(top, ids.end_conversation) if attempt == 0 else None)
            yield  # unreachable: a coroutine with no engine steps, for the shared redraw loop

        v = run_to_end(redraw(g, ids.end_conversation, draft, intent, earlier))
        usage = {"cached_tokens": 0, "prefill_tokens": len(tokens), "decode_tokens": decoded,
                 "requests": calls, "seconds": round(time.perf_counter() - t0, 6)}
        if v.reason is not None:
            return Turn("", [], False, v.p_end, EXHAUSTED, rejected=v.rejected, usage=usage), None
        d = v.draft
        keep = d.sampled[:-1] if d.stop is not None else d.sampled  # '\n' and the turn (as the local Turn has it)
        if v.ended:  # the conversation records what was sampled: '\n', the turn, the end token
            return (Turn(d.text, keep, True, v.p_end, ENDED, rejected=v.rejected, usage=usage),
                    d.sampled if d.stop == ids.end_conversation else keep)
        return Turn(d.text, keep, False, v.p_end, OK, truncated=d.stop is None, rejected=v.rejected, usage=usage), keep


def run_to_end(steps):
    """The result of a coroutine that yields no engine step."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a remote turn asked for a local decode step")


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read(1 << 16))["error"]["message"][:200]  # (an error body is small)
    except Exception:  # noqa: BLE001 - any body at all
        return exc.reason or ""


def _parse_id(s: str) -> int:
    if not isinstance(s, str) or not s.startswith("token_id:"):
        raise ValueError(f"token {s!r} is not 'token_id:N': the server ignores return_tokens_as_token_ids")
    return int(s[len("token_id:"):])


def _token_ids(answer: dict) -> list[int]:
    lp = answer["choices"][0].get("logprobs") or {}
    return [_parse_id(t) for t in lp.get("tokens") or []]


def _first_token(answer: dict) -> tuple[int, dict[int, float]]:
    lp = answer["choices"][0].get("logprobs") or {}
    toks = lp.get("tokens") or []
    if not toks:
        raise RemoteError("user model: the answer carries no token (no logprobs returned)")
    tops = (lp.get("top_logprobs") or [{}])[0] or {}
    return _parse_id(toks[0]), {_parse_id(k): v for k, v in tops.items()}


def _prob(top: dict[int, float], token: int) -> float | None:
    """P(token) from the returned top log-probs; None when the server did not return it."""
    import math

    return math.exp(top[token]) if token in top else None


class RemoteSimulatedUser:
    """One conversation against the remote UserLM (the local ``SimulatedUser``'s interface)."""

    session = None  # the server keeps the state (its prefix cache)

    def __init__(self, model: RemoteUserModel, conversation, rng):
        self.model, self.conversation, self.rng = model, conversation, rng

    def add_assistant(self, text: str) -> None:
        self.conversation.add_assistant(text)

    def next_turn(self) -> Turn:
        conv = self.conversation
        turn, ids = self.model.turn(conv.tokens, conv.user_turns(), conv.intent,
                                    seed=int(self.rng.integers(2 ** 31)))
        if turn.outcome == ENDED:
            conv.end(ids)
        elif turn.outcome == OK:
            conv.add_user(ids=ids)
        return turn


class RemoteSimulator:
    """``UserSimulator.start`` for a remote UserLM."""

    remote = True  # its turns are HTTP requests: no local engine to schedule

    def __init__(self, model: RemoteUserModel):
        self.model = model

    def start(self, intent: str | None, *, seed: int = 0, key: tuple = ()) -> RemoteSimulatedUser:
        return RemoteSimulatedUser(self.model, Conversation(self.model.fmt, intent), rng_for(seed, *key))


def simulator_for(model, *, sampling: SamplingParams, guardrails: Guardrails, max_new_tokens: int):
    """The simulator of a user model that ``simulation.build.open_user_model`` opened: the one
    place that tells a remote UserLM (sampling and guardrails set when it was opened) from a local one."""
    if isinstance(model, RemoteUserModel):
        return RemoteSimulator(model)
    return UserSimulator(model, sampling=sampling, guardrails=guardrails, max_new_tokens=max_new_tokens)
