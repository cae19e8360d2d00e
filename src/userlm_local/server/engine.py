"""The model behind the server: one engine, one scheduler, many generations at once.

Every choice of every request is a step coroutine over ``generate.decode_steps`` on a session of
its own, submitted to the engine's ``batch.Scheduler``: concurrent requests share its rounds
(one ``llama_decode`` batch on llama.cpp).  Each sampled token is reported as it is drawn
(``generation.Generation.on_token``) to a callback that the app turns into a streamed chunk; a stop string, the
``max_tokens`` limit, a stop id or a cancelled request ends the choice.  Sessions are opened
and closed on the scheduler thread; at most ``parallel`` are open at once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Callable

import numpy as np

from ..assistants import AssistantError
from ..assistants.local import LocalAssistant
from ..runtime.backends import load_backend, load_options
from ..runtime.scheduler import Scheduler
from ..text.conversation import USER, Conversation
from ..util.errors import UserError
from .generation import Cancelled, Generation, Piece, TokenInfo
from .requests import BadField, Params


class ModelService:
    """A loaded model served as the assistant (its own chat template) or as the simulated user
    (the UserLM format)."""

    def __init__(self, path: str, *, as_user: bool | None = None, max_tokens: int = 256,
                 threads: int | None = None, parallel: int = 8, n_ctx: int = 4096, device: str | None = None,
                 flipped: bool = False, end_text: str | None = None, max_choices: int = 32,
                 max_request_tokens: int = 65536, aliases: tuple[str, ...] = ()):
        self.path = str(path)
        self.name = self.path.rstrip("/").split("/")[-1]
        # the names a request's 'model' may give: this model's, its file's stem, what serve was
        # given for it ('tiny', 'smollm2', a path) and 'default'; anything else is a 404
        self.names = {self.name, self.name.removesuffix(".gguf"), "default", *(a for a in aliases if a)}
        self.backend = load_backend(path, allow_non_userlm=True, **load_options(
            path, n_ctx=n_ctx, n_seq_max=parallel, threads=threads, device=device))
        self.tokenizer = self.backend.tokenizer
        fmt = self.backend.fmt
        is_userlm = fmt is not None and fmt.ids.end_conversation is not None
        self.as_user = is_userlm if as_user is None else as_user
        if self.as_user and not is_userlm:
            raise UserError(f"{path}: not a UserLM (no <|endconversation|> token); it can only serve as the assistant")
        if flipped and not self.as_user:
            raise UserError("--roles flipped is for a simulated user (serve a UserLM, --as user)")
        # a harness that flips roles (tau2-bench, tau-bench, openevals' LLM user) sends its simulated
        # user's past turns as 'assistant' and reads the next one from the 'assistant' slot
        self.flipped = flipped
        self.reply_role = "assistant" if flipped or not self.as_user else "user"
        self.end_marker = end_text or "<|endconversation|>"
        self.max_tokens = max_tokens
        self.parallel = parallel
        self.max_choices, self.max_request_tokens = max_choices, max_request_tokens
        self.context_length = self.backend.context_length
        self.vocab = self.backend.vocab_size
        self.end_conversation = fmt.ids.end_conversation if is_userlm else None
        if self.as_user:
            self.stop_ids = fmt.ids.stop_ids
        else:
            self.assistant = LocalAssistant(self.backend, max_tokens=max_tokens)
            self.stop_ids = self.assistant.stop_ids
        self.scheduler = Scheduler(self.backend)
        self.slots = threading.BoundedSemaphore(parallel)
        self.created = int(os.path.getmtime(self.path))
        self.stats = {"requests": 0, "cancelled": 0, "active": 0}
        self._lock = threading.Lock()

    def serves(self, model) -> bool:
        return model in self.names

    # -- prompts ------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not self.as_user:
            try:
                if any(self._spells_special(m["content"]) for m in messages):
                    return self._prompt_keeping_text(messages)
                return self.assistant.prompt_ids(messages)
            except AssistantError as exc:  # the model's own template refused these messages
                raise BadField("messages", f"'messages': {exc}") from None
            except BadField:
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure of the template: still these messages
                raise BadField("messages", f"'messages': the chat template failed on these messages "
                                           f"({type(exc).__name__}: {exc})") from None

        if self.flipped:
            messages = unflip(messages)
        try:
            conv = Conversation.from_messages(self.backend.fmt, messages)
        except UserError as exc:
            raise BadField("messages", f"'messages': {exc}") from None
        if conv.state != USER:
            raise BadField("messages", "'messages': the simulated user speaks next, so the last message must be "
                                       "the assistant's (or only the system intent)")
        return conv.tokens

    def _spells_special(self, text: str) -> bool:
        return self.tokenizer.encode(text) != self.tokenizer.encode_with_special(text)

    def _prompt_keeping_text(self, messages: list[dict]) -> list[int]:
        """The assistant's prompt where a message spells a special token ('<|im_start|>system'):
        the template is rendered with a marker for each content, and the special-token strings of
        the contents are tokenized as text, the template's own as tokens (a client cannot inject a
        role marker).  A template that transforms the contents (so they cannot be found again) is
        refused with a 400 rather than guessed at."""
        import re

        tok = self.tokenizer
        marks = [chr(0xF0000 + i) for i in range(len(messages))]

        def render(msgs):
            try:
                return self.assistant.template.render(messages=msgs, add_generation_prompt=True,
                                                      bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
            except Exception as exc:  # noqa: BLE001 - the template's failure on these messages
                raise AssistantError(f"the chat template failed on these messages ({type(exc).__name__}: {exc})") \
                    from None

        marked = render([{"role": m["role"], "content": k} for m, k in zip(messages, marks)])
        text, spans = [], []
        at = 0
        for piece in re.split("([\U000F0000-\U000FFFFD])", marked):
            i = ord(piece) - 0xF0000 if len(piece) == 1 and 0 <= ord(piece) - 0xF0000 < len(messages) else None
            if i is not None:
                piece = messages[i]["content"]
                spans.append((at, at + len(piece)))
            text.append(piece)
            at += len(piece)
        text = "".join(text)
        if text != render(messages):
            raise BadField("messages", "'messages': a message spells a special token of this model, and its chat "
                                       "template changes message text, so that text cannot be kept apart from "
                                       "the template's own tokens; remove the special-token text")
        return tok.encode_template(text, spans)

    def reply_text(self, text: str, ended: bool) -> str:
        """A user turn as the harness reads it: the end marker when the user ended (after what it said
        first, if anything), and never an empty message (tau2-bench refuses one)."""
        if ended:
            return f"{text} {self.end_marker}".strip() if self.flipped else (text or self.end_marker)
        return text if text or not self.flipped else self.end_marker

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode_with_special(prompt)

    def check_choices(self, prompts: int, n: int) -> None:
        """prompts x n within the server's --max-choices (before any prompt is tokenized)."""
        if prompts * n > self.max_choices:
            raise BadField("n" if prompts == 1 else "prompt",
                           f"this request asks for {prompts * n} choices ({prompts} prompt(s) x n={n}); at most "
                           f"{self.max_choices} per request here (the server's --max-choices)")

    def check_tokens(self, prompts: int, params: Params) -> None:
        """Tokens all the choices of a request may generate, within --max-request-tokens."""
        total = prompts * params.n * (params.max_tokens or self.max_tokens)
        if total > self.max_request_tokens:
            raise BadField("max_tokens", f"this request may generate {total} tokens ({prompts * params.n} choices x "
                                         f"max_tokens {params.max_tokens or self.max_tokens}); at most "
                                         f"{self.max_request_tokens} per request here (the server's --max-request-tokens)")

    def check_room(self, prompt: list[int], params: Params, what: str) -> None:
        if len(prompt) >= self.context_length:
            raise BadField(what, f"the prompt is {len(prompt)} tokens; this model's context is {self.context_length}")
        if params.max_tokens and len(prompt) + params.max_tokens > self.context_length:
            raise BadField("max_tokens", f"the prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) "
                                         f"is more than this model's context of {self.context_length}")
        if params.n > self.parallel:
            raise BadField("n", f"'n' is at most {self.parallel} here (the server's --parallel)")
        if params.max_tokens is None:
            params.max_tokens = min(self.max_tokens, self.context_length - len(prompt))

    # -- generation ---------------------------------------------------------------------------
    def start(self, prompt: list[int], params: Params, index: int, emit: Callable[[Piece], None],
              cancelled: threading.Event, *, chat: bool) -> Future:
        """A future of the ``Choice``; waits for a free session slot first (call from a worker
        thread).  A request given up while it waits (``cancelled``) submits nothing: ``Cancelled``."""
        while not self.slots.acquire(timeout=0.1):
            if cancelled.is_set():
                raise Cancelled
        if cancelled.is_set():
            self.slots.release()
            raise Cancelled
        gen = Generation(self, prompt, params, index, emit, cancelled, strip_newline=chat and self.as_user,
                         release=self.slots.release)
        with self._lock:
            self.stats["active"] += 1
        fut = self.scheduler.submit(gen.steps, gen.open_session)

        def done(f: Future) -> None:
            gen.abandon()
            with self._lock:
                self.stats["active"] -= 1
                if f.cancelled() or (not f.exception() and f.result().finish_reason == "cancelled"):
                    self.stats["cancelled"] += 1

        fut.add_done_callback(done)
        if cancelled.is_set():  # given up while it was being submitted: dropped before its first step
            fut.cancel()
        return fut

    def bias(self, logit_bias: dict[int, float]):
        idx = np.fromiter(logit_bias, dtype=np.int64)
        val = np.fromiter(logit_bias.values(), dtype=np.float32)

        def process(turn_ids: list[int], logits: np.ndarray) -> np.ndarray:
            if not isinstance(logits, np.ndarray):  # a torch tensor on its device
                import torch

                keep = idx < logits.numel()
                return logits.index_add(0, torch.as_tensor(idx[keep], device=logits.device),
                                        torch.as_tensor(val[keep], device=logits.device))
            out = logits.copy()
            keep = idx < out.size
            out[idx[keep]] += val[keep]
            return out

        return process

    def token_info(self, token: int, logits: np.ndarray, top: int, as_ids: bool = False) -> TokenInfo:
        """Log-probabilities under the model's own distribution (temperature 1, no bias); with
        ``as_ids``, tokens named ``token_id:N`` (vLLM's ``return_tokens_as_token_ids``)."""
        x = (logits if isinstance(logits, np.ndarray) else logits.cpu().numpy()).astype(np.float64)
        m = x.max()
        logp = x - m - np.log(np.exp(x - m).sum())
        piece = ((lambda t: f"token_id:{int(t)}") if as_ids else (lambda t: self.tokenizer.decode([int(t)])))
        best = np.argpartition(-logp, top)[:top] if top else np.array([], dtype=np.int64)
        best = best[np.argsort(-logp[best], kind="stable")]
        text = piece(token)
        return TokenInfo(text, float(logp[token]), list(text.encode()),
                         [(piece(t), float(logp[t]), list(piece(t).encode())) for t in best])

    def close(self) -> None:
        self.scheduler.close()


def unflip(messages: list[dict]) -> list[dict]:
    """A flipped conversation (the simulated user's turns as 'assistant', the agent's as 'user') in
    UserLM's roles; the system prompt stays the intent.  A greeting the agent sends before the user's
    first turn is dropped: UserLM conversations start with the user."""
    if not messages or messages[0]["role"] != "system":
        raise BadField("messages", "'messages': --roles flipped takes the harness's system prompt as the "
                                   "intent; the first message must be a system message")
    body = [{"role": {"user": "assistant", "assistant": "user"}.get(m["role"], m["role"]), "content": m["content"]}
            for m in messages[1:]]
    while body and body[0]["role"] == "assistant":
        body = body[1:]
    return [messages[0], *body]
