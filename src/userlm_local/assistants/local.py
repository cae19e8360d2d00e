"""A local model as the assistant, prompted with its *own* chat template.

The template comes from the checkpoint (``chat_template.jinja`` or
``tokenizer_config.json``) or the GGUF metadata, rendered with jinja2 the way
transformers does.  Each conversation keeps its own session, so a reply costs
only the new tokens.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..runtime.backends import load_backend, load_options
from ..runtime.decode import decode_steps, on_engine, sync_session
from ..runtime.sampling import Noise, SamplingParams, make_sampler, repetition_penalty
from ..runtime.scheduler import Scheduler
from ..util.errors import UserError
from .base import AssistantBase, AssistantError, add_usage

# A chat template is code that came with a model file: bounded like one.  Real templates are a few
# KB and render a conversation in milliseconds; a hostile one (nested range() loops, 'x' * 10**10,
# a 50 MB file) hung or killed the process.
MAX_TEMPLATE_CHARS = 1_000_000
MAX_RENDER_SECONDS = 2.0
MAX_RENDER_ITEMS = 10_000_000  # range() items a render may walk, all loops together
MAX_PRODUCT_CHARS = 10_000_000  # the longest string or list a template may build with * or +


def compile_template(source: str):
    import time

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    budget = threading.local()  # per render: campaigns render from several threads at once
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the chat template is {len(source):,} characters; at most {MAX_TEMPLATE_CHARS:,}")

    def raise_exception(message):
        raise TemplateError(message)

    class Budgeted(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise TemplateError(f"the chat template raises to the power {right}")
            if operator == "*" and isinstance(right, int) and isinstance(left, (str, list, tuple)):
                left, right = right, left
            if operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple)) \
                    and left * len(right) > MAX_PRODUCT_CHARS:
                raise TemplateError(f"the chat template builds a sequence of {left * len(right):,} items")
            if operator == "+" and isinstance(left, (str, list)) and isinstance(right, type(left)) \
                    and len(left) + len(right) > MAX_PRODUCT_CHARS:
                raise TemplateError("the chat template builds a string past its size budget")
            return super().call_binop(context, operator, left, right)

    def budgeted_range(*args):
        """The sandbox's range (at most 100,000 items each), counted against the render's budget."""
        for i, x in enumerate(safe_range(*args)):
            if i % 1024 == 0:
                budget.items += 1024
                if budget.items > MAX_RENDER_ITEMS or time.monotonic() > budget.deadline:
                    raise TemplateError(f"the chat template ran past its budget "
                                        f"({MAX_RENDER_SECONDS:g} s, {MAX_RENDER_ITEMS:,} loop items)")
            yield x

    env = Budgeted(trim_blocks=True, lstrip_blocks=True)
    env.globals["range"] = budgeted_range
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)

    class Bounded:
        """``render`` with a fresh budget each time."""

        def render(self, **kw):
            budget.deadline, budget.items = time.monotonic() + MAX_RENDER_SECONDS, 0
            out = template.render(**kw)
            if len(out) > MAX_PRODUCT_CHARS:
                raise TemplateError(f"the chat template rendered {len(out):,} characters")
            return out

    return Bounded()


class LocalAssistant(AssistantBase):
    kind = "local"
    lockstep = True  # its replies are engine steps
    OPTIONS = ("temperature", "top_p", "repeat_penalty", "max_tokens", "seed", "system_prompt", "n_ctx",
               "n_seq_max", "threads", "device")

    def __init__(self, backend, *, temperature: float = 0.0, top_p: float = 1.0, repeat_penalty: float = 1.0,
                 max_tokens: int = 256, seed: int = 0, system_prompt: str | None = None):
        tok = backend.tokenizer
        if not tok.chat_template:
            raise UserError(f"{backend.path}: the assistant model has no chat template")
        self.backend = backend
        self.model = str(backend.path)
        from jinja2.exceptions import TemplateError, TemplateSyntaxError

        try:
            self.template = compile_template(tok.chat_template)
        except TemplateSyntaxError as exc:
            raise UserError(f"{backend.path}: the chat template does not compile ({exc.message}, line {exc.lineno})") from None
        except TemplateError as exc:
            raise UserError(f"{backend.path}: {exc}") from None
        self.sampler = make_sampler(SamplingParams(temperature=temperature, top_p=top_p))
        self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        repetition_penalty(repeat_penalty, ())  # checked here, not at the first reply
        self.repeat_penalty = repeat_penalty
        self.sampling = {"temperature": temperature, "top_p": top_p, "repeat_penalty": repeat_penalty}
        self.system_prompt = system_prompt
        stops = {tok.token_id(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "</s>")}
        if tok.eos_token:
            stops.add(tok.token_id(tok.eos_token))
        self.stop_ids = frozenset(s for s in stops if s is not None)
        try:  # a template that fails on the plainest conversation fails every one: say so at load
            self.prompt_ids([{"role": "user", "content": "Hello."}])
        except AssistantError as exc:
            raise UserError(f"{backend.path}: {exc} (a plain user message)") from None
        self.sessions: dict = {}
        self.usage: dict = {}  # key -> tokens this conversation cost (see ``forget``)
        self.replies: dict = {}  # key -> replies given in this conversation (its next reply's noise)
        self.lock = threading.Lock()  # guards sessions and the counters, not the engine
        self.tokens_generated = 0  # sampled ids, stop ids included (for benchmarks)
        self._scheduler = None

    @property
    def scheduler(self):
        """The engine's scheduler: every reply's decode steps are batched with the others in
        flight (one ``extend_many`` round each step; on llama.cpp one shared batch)."""
        with self.lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.backend)
            return self._scheduler

    def close(self) -> None:
        with self.lock:
            if self._scheduler is not None:
                self._scheduler.close()
                self._scheduler = None

    @classmethod
    def load(cls, path: str, *, n_ctx: int = 4096, n_seq_max: int = 1, threads: int | None = None,
             device: str | None = None, **opts):
        if not Path(path).exists():
            raise UserError(f"{path}: no such assistant model (give a model path, an http(s) URL or script:FILE)")
        backend = load_backend(path, allow_non_userlm=True, **load_options(
            path, n_ctx=n_ctx, n_seq_max=n_seq_max, threads=threads, device=device))
        return cls(backend, **opts)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation in the model's own template; the configured system prompt goes first
        unless the messages bring their own."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        tok = self.backend.tokenizer
        from jinja2.exceptions import TemplateError

        try:
            text = self.template.render(messages=msgs, add_generation_prompt=True,
                                        bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
        except TemplateError as exc:  # raise_exception(...), an unsafe access the sandbox refused, ...
            raise AssistantError(f"the chat template failed on these messages ({type(exc).__name__}: {exc})") from None
        return tok.encode_with_special(text)

    def reply(self, messages: list[dict], key: object = None, *, temperature: float | None = None,
              top_p: float | None = None, max_tokens: int | None = None, seed: int | None = None) -> str:
        """The reply; the keyword arguments override this assistant's settings for this call only.
        Its decode steps are batched with every other reply in flight on this engine (threads)."""
        session, steps, finish = self._prepare(messages, key, temperature, top_p, max_tokens, seed)
        try:
            out = self.scheduler.run(steps, session)
        except UserError as exc:
            raise AssistantError(f"assistant context: {exc}") from None
        return finish(out)

    def reply_steps(self, messages: list[dict], key: object = None):
        """The reply as engine steps, for a driver that runs many conversations on one thread."""
        session, steps, finish = self._prepare(messages, key)
        try:
            out = yield from on_engine(self.backend, session, steps())
        except UserError as exc:
            raise AssistantError(f"assistant context: {exc}") from None
        return finish(out)

    def _prepare(self, messages, key, temperature=None, top_p=None, max_tokens=None, seed=None):
        """(the conversation's session, the reply's step coroutine over it, what turns its sampled
        ids into the reply text and counts them)."""
        ids = self.prompt_ids(messages)
        sampler = self.sampler if temperature is None and top_p is None else make_sampler(SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p if top_p is None else top_p))
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        seed = self.seed if seed is None else seed
        with self.lock:
            session = self.sessions.get(key)
            if session is None:
                session = self.sessions[key] = self.backend.new_session()
            index = self.replies.get(key, 0)
            self.replies[key] = index + 1
        noise = Noise.for_(seed, key).child(index)  # the reply's place in its conversation, then position
        processors = [repetition_penalty(self.repeat_penalty, ids, self.stop_ids)] if self.repeat_penalty != 1.0 else []

        fed, times = [], [time.perf_counter()]

        def steps():
            new, _ = sync_session(session, ids)
            fed.append(len(new))
            logits = yield new
            times.append(time.perf_counter())  # the prefill's end
            return (yield from decode_steps(logits, sampler=sampler, noise=noise, processors=processors,
                                            stop_ids=self.stop_ids, max_tokens=max_tokens))

        def finish(out: list[int]) -> str:
            with self.lock:
                self.tokens_generated += len(out)
                self.usage[key] = add_usage(self.usage.get(key), len(ids), len(out), len(ids) - fed[0],
                                            times[1] - times[0], time.perf_counter() - times[1])
            if out and out[-1] in self.stop_ids:
                out = out[:-1]
            return self.backend.tokenizer.decode(out, skip_special=True).strip()

        return session, steps, finish

    def forget(self, key: object) -> dict | None:
        with self.lock:
            session = self.sessions.pop(key, None)
            usage = self.usage.pop(key, None)
            self.replies.pop(key, None)
        if session is not None:
            with self.lock:
                scheduler = self._scheduler
            if scheduler is None:  # no engine thread (replies ran as steps on the caller's thread)
                session.close()
            else:
                scheduler.call(session.close)  # between engine rounds
        return usage
