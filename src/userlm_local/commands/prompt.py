"""``userlm-local prompt``: print the exact prompt the model sees for a conversation."""

from __future__ import annotations

import json
import sys

from ..text.prompt_format import ChatFormat
from ..text.conversation import USER, Conversation
from ..util.errors import UserError
from ..runtime.backends import inspect_model, load_tokenizer
from ._common import add_model_arguments, model_path, read_messages

HELP = "print the exact prompt text (or token ids) the UserLM sees for an OpenAI-format conversation"


def add_arguments(p) -> None:
    add_model_arguments(p)
    p.add_argument("--conversation", required=True, metavar="FILE.json",
                   help="messages: [{role: system|user|assistant, content}] (system = the intent)")
    p.add_argument("--ids", action="store_true", help="print token ids (JSON) instead of text")
    p.add_argument("--bos", action="store_true", help="start with <|begin_of_text|>")


def run(args) -> int:
    path = model_path(args)
    inspect_model(path, allow_non_userlm=args.allow_non_userlm, allow_pickle=args.allow_pickle)
    fmt = ChatFormat(load_tokenizer(path), add_bos=args.bos, require_userlm=not args.allow_non_userlm)
    conv = Conversation.from_messages(fmt, read_messages(args.conversation))
    if conv.state != USER:
        raise UserError(f"{args.conversation}: the conversation ended or its last message is a user turn; "
                        "the next turn must be the user's (end with the system intent or an assistant turn)")
    if args.ids:
        print(json.dumps(conv.tokens))
    else:
        sys.stdout.write(fmt.text(conv.tokens))
        if sys.stdout.isatty():
            sys.stdout.write("\n")
    return 0
