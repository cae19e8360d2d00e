"""A campaign from a typed description: what ``simulate`` asks for, what each Ray actor rebuilds.

``CampaignSpec`` holds resolved names only (model paths, URLs, ``script:`` files; short names such
as ``tiny`` are the CLI's to resolve), so it is plain data that pickles to a Ray actor.
``open_user_model`` is the one place that decides between a local UserLM and a remote one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..assistants import make_assistant
from ..runtime.backends import load_backend, load_options
from ..runtime.sampling import SamplingParams, preset
from ..util.errors import UserError
from ..util.http_retry import MAX_REPLY_BYTES
from .campaign import Campaign, CampaignConfig
from .guardrails import Guardrails
from .remote_user import RemoteUserModel


def is_url(spec: str | None) -> bool:
    return (spec or "").startswith(("http://", "https://"))


@dataclass
class CampaignSpec:
    user: str                       # a model path, or the base URL of a completions server
    assistant: str                  # a model path, an OpenAI-compatible base URL, or script:FILE
    user_tokenizer: str | None = None   # with a user URL: the served UserLM's tokenizer
    user_model: str | None = None       # with a user URL: the model name sent
    assistant_model: str | None = None  # the model name sent to an HTTP assistant
    assistant_max_tokens: int | None = None
    assistant_sampling: dict = field(default_factory=dict)  # temperature, top_p, repeat_penalty
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 3
    stream: bool = False
    max_reply_bytes: int = MAX_REPLY_BYTES  # the most bytes of one answer read from an endpoint
    trials: int = 1
    max_turns: int = 6
    seed: int = 0
    sampling: str = "paper"         # a preset name (runtime.sampling.PRESETS)
    guardrails: str = "none"        # none | paper
    concurrency: int = 1
    max_new_tokens: int = 96
    context: str = "end"            # end | truncate
    n_ctx: int = 4096
    threads: int | None = None
    device: str | None = None

    @property
    def remote_user(self) -> bool:
        return is_url(self.user)

    @property
    def local_assistant(self) -> bool:
        return not self.assistant.startswith(("http://", "https://", "script:"))

    def load_options(self, path) -> dict:
        return load_options(path, n_ctx=self.n_ctx, n_seq_max=self.concurrency, threads=self.threads,
                            device=self.device)


def open_user_model(user: str, *, tokenizer: str | None = None, model: str | None = None,
                    sampling: SamplingParams, guardrails: Guardrails, max_new_tokens: int,
                    api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 3,
                    max_reply_bytes: int = MAX_REPLY_BYTES, load=None):
    """The user model: a ``RemoteUserModel`` for a URL (checked against the server now), else the
    local model ``load(path)`` loads (``load_backend``)."""
    if is_url(user):
        if not tokenizer:
            raise UserError(f"the user model {user} is a URL: it needs the UserLM's tokenizer (a checkpoint dir "
                            "or GGUF: --user-tokenizer PATH)")
        remote = RemoteUserModel(user, tokenizer, model=model, api_key_env=api_key_env, timeout=timeout,
                                 retries=retries, sampling=sampling, guardrails=guardrails,
                                 max_new_tokens=max_new_tokens, max_reply_bytes=max_reply_bytes)
        remote.check()
        return remote
    if tokenizer:
        raise UserError("--user-tokenizer goes with a user model given as a URL")
    return (load or load_backend)(Path(user))


def user_model_facts(user: str, model) -> dict:
    """What the transcripts record of the user model: where it is, its format and precision."""
    if isinstance(model, RemoteUserModel):
        return {"path": user, "format": "remote", "model": model.model, "backend": "openai-completions",
                "tokenizer": model.tokenizer_path}
    path = Path(user)
    manifest = next((c for c in (path.parent / "manifest.json", path.with_name(path.name + ".manifest.json"),
                                 path / "manifest.json") if c.is_file()), None)
    d = model.describe()
    return {"path": str(path), "format": d["format"], "quant": d["quant"], "backend": model.name,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else None}


def build_campaign(spec: CampaignSpec, assistant=None) -> Campaign:
    """The models and the ``Campaign`` that ``spec`` describes, checked before any conversation;
    ``assistant``: one already built for an earlier campaign (the bench's extrinsic runs share one)."""
    if not spec.remote_user and not Path(spec.user).exists():  # before a large assistant loads
        raise UserError(f"{spec.user}: no such file or directory (--user: a GGUF file, a model directory, "
                        "'default' or 'tiny')")
    assistant = assistant or make_assistant(spec.assistant, model=spec.assistant_model, api_key_env=spec.api_key_env,
                               timeout=spec.timeout, retries=spec.retries, stream=spec.stream, seed=spec.seed,
                               max_reply_bytes=spec.max_reply_bytes,
                               **({"max_tokens": spec.assistant_max_tokens} if spec.assistant_max_tokens else {}),
                               **spec.assistant_sampling,
                               **(spec.load_options(spec.assistant) if spec.local_assistant else {}))
    if assistant.kind == "http":
        assistant.check()
    guardrails = Guardrails.named(spec.guardrails)
    backend = open_user_model(spec.user, tokenizer=spec.user_tokenizer, model=spec.user_model,
                              sampling=preset(spec.sampling), guardrails=guardrails,
                              max_new_tokens=spec.max_new_tokens, api_key_env=spec.api_key_env,
                              timeout=spec.timeout, retries=spec.retries, max_reply_bytes=spec.max_reply_bytes,
                              load=lambda p: load_backend(p, **spec.load_options(p)))
    config = CampaignConfig(trials=spec.trials, max_turns=spec.max_turns, seed=spec.seed,
                            sampling=preset(spec.sampling), sampling_name=spec.sampling,
                            guardrails=guardrails, guardrails_name=spec.guardrails,
                            concurrency=spec.concurrency, max_new_tokens=spec.max_new_tokens, context=spec.context)
    return Campaign(backend, assistant, config, user_model_facts(spec.user, backend))
