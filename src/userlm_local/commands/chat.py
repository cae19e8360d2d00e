"""``userlm-local chat``: the model plays the user; you (or a file) play the assistant."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..util.errors import UserError
from ..simulation.guardrails import Guardrails
from ..runtime.sampling import PRESETS, preset
from ..simulation.build import is_url, open_user_model
from ..simulation.remote_user import simulator_for
from ..simulation.converse import EndedBy, Outcome, converse
from ._common import (_lone_surrogate, add_backend_arguments, add_model_arguments, load_user_backend, not_empty,
                      threads_option)

HELP = "talk to a UserLM: it plays the user, you type the assistant's replies (or give a file of them)"


def add_arguments(p) -> None:
    add_model_arguments(p)
    add_backend_arguments(p)
    p.add_argument("--intent", required=True, help="one sentence: what the simulated user wants")
    p.add_argument("--assistant-file", metavar="FILE",
                   help="scripted assistant replies: a JSON list of strings, or one reply per line")
    p.add_argument("--max-turns", type=int, default=10, help="user turns at most (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling", default="paper", choices=sorted(PRESETS),
                   help="paper (T=1.0, top_p=0.8, default) or generation-config (T=0.6, top_p=0.9)")
    p.add_argument("--guardrails", default="none", choices=("none", "paper"),
                   help="none (default) or paper: the four guardrails of the paper")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", metavar="FILE.json", help="also write the conversation as OpenAI-format messages")
    p.add_argument("--user-tokenizer", default=None, metavar="PATH",
                   help="when MODEL is the base URL of a completions server serving the UserLM: a checkpoint dir "
                        "or GGUF with its tokenizer (see simulate --user URL)")


def read_replies(path: str) -> list[str]:
    from ..assistants.scripted import ScriptedAssistant

    return ScriptedAssistant.from_file(path).replies


def run(args) -> int:
    if not args.intent.strip():
        raise UserError("the intent is empty: give one sentence saying what the user wants")
    if _lone_surrogate(args.intent):  # bytes that are not UTF-8 on the command line (was a TypeError)
        raise UserError("--intent is not valid UTF-8 text")
    if args.max_turns < 1:
        raise UserError("--max-turns must be at least 1")
    if args.max_new_tokens < 2:
        raise UserError("--max-new-tokens must be at least 2 (a turn's leading newline is one of them)")
    not_empty("--out", args.out)
    if args.out is not None:
        _check_out(Path(args.out))
    threads_option(args)  # checked before reading any input
    replies = read_replies(args.assistant_file) if args.assistant_file else None
    interactive = replies is None
    if interactive and not sys.stdin.isatty():
        from ..assistants.scripted import MAX_SCRIPT_BYTES

        raw = sys.stdin.buffer.read(MAX_SCRIPT_BYTES + 1)  # bounded, as a --assistant-file is
        if len(raw) > MAX_SCRIPT_BYTES:
            raise UserError(f"standard input: larger than {MAX_SCRIPT_BYTES // 2**20} MiB; not a list of replies")
        text = raw.decode("utf-8", errors="surrogateescape")  # (a byte that is not UTF-8: refused at its turn)
        replies = [line for line in text.splitlines() if line.strip()]
    remote = is_url(args.model)
    if remote and not args.user_tokenizer:
        raise UserError("a MODEL URL needs --user-tokenizer PATH (the UserLM's checkpoint dir or GGUF)")
    if args.user_tokenizer and not remote:
        raise UserError("--user-tokenizer goes with a MODEL URL")
    setting = dict(sampling=preset(args.sampling), guardrails=Guardrails.named(args.guardrails),
                   max_new_tokens=args.max_new_tokens)
    model = open_user_model(args.model if remote else "", tokenizer=args.user_tokenizer,
                               load=lambda _: load_user_backend(args), **setting)
    sim = simulator_for(model, **setting)
    user = sim.start(args.intent, seed=args.seed)
    try:
        ended_by = _converse(user, args, replies, interactive)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the turns so far are kept too
        print("[conversation interrupted]", file=sys.stderr)
        _write(args.out, user)
        raise
    except UserError:  # a reply that cannot be taken, a user model that failed: the turns so far are kept
        _write(args.out, user)
        raise
    print(f"[conversation ended: {ended_by}]", file=sys.stderr)
    _write(args.out, user)
    return 0


def _converse(user, args, replies: list[str] | None, interactive: bool) -> EndedBy:
    """The turns, printed as they come; how the conversation ended."""

    def on_turn(turn) -> None:
        if turn.outcome == Outcome.EXHAUSTED:
            print(f"[guardrails exhausted after {len(turn.rejected)} drafts]")
        elif turn.ended:
            print("user> <|endconversation|>")
        else:
            print(f"user> {turn.text}", flush=True)

    def reply(turn_no: int) -> str | None:
        text = _next_reply(replies, turn_no)
        if text is not None and _lone_surrogate(text):  # typed or piped bytes that are not UTF-8
            raise UserError(f"the assistant's reply {turn_no} is not valid UTF-8 text")
        if text is not None and not (interactive and sys.stdin.isatty()):
            print(f"assistant> {text}")
        return text

    ended_by, error = converse(user, reply, max_turns=args.max_turns, on_turn=on_turn)
    if error is not None:
        raise UserError(error)
    return ended_by


def _write(out: str | None, user) -> None:
    if not out:
        return
    from ..util.files import Staged, disk_errors

    path = Path(out)
    with disk_errors(path), Staged(path) as st:
        st.tmp.write_text(json.dumps(user.conversation.messages, indent=2, ensure_ascii=False) + "\n")
        st.commit()
    print(f"wrote {path}", file=sys.stderr)


def _check_out(out: Path) -> None:
    """--out must be a file we can write, found out before the model loads and the conversation runs."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such directory {out.parent}")
    try:  # a real probe: access() says yes to root even where nothing can be created
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: cannot write there (permission denied)")


def _next_reply(replies: list[str] | None, turn_no: int) -> str | None:
    if replies is not None:
        return replies[turn_no - 1] if turn_no <= len(replies) else None
    try:
        text = input("assistant> ")
    except EOFError:
        return None
    return text if text.strip() else None
