"""The UserLM prompt format, rendered to token ids segment by segment.

UserLM-8b's template (``chat_template.jinja`` on the Hub) is::

    <|start_header_id|>{role}<|end_header_id|>\\n{content}<|eot_id|>   (per message)
    <|start_header_id|>user<|end_header_id|>                           (always, open)

The intent is the ``system`` message, roles are not flipped, there is no BOS by
default, and the model's first generated token is ``\\n``.  Special tokens are
looked up in the model's own tokenizer; their ids are never hard-coded.
Because every segment between special tokens is tokenized on its own, the ids
equal what tokenizing the rendered template text gives, and a conversation can
grow by appending ids without re-tokenizing its history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..util.errors import UserError
from .tokenizer import Tokenizer

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOT = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_CONVERSATION = "<|endconversation|>"

ROLES = ("system", "user", "assistant")

# microsoft/UserLM-8b chat_template.jinja, verbatim (add_generation_prompt is ignored by it).
USERLM_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}{{ '<|start_header_id|>user<|end_header_id|>' }}"
)


def template_sha256(template: str | None) -> str | None:
    return None if template is None else hashlib.sha256(template.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens the UserLM format uses, read from one tokenizer."""

    bos: int | None
    eot: int
    end_of_text: int | None
    start_header: int
    end_header: int
    end_conversation: int | None
    newline: int

    @property
    def stop_ids(self) -> frozenset[int]:
        """Generation of a user turn stops on any of these."""
        ids = {self.eot, self.end_of_text, self.end_conversation}
        return frozenset(i for i in ids if i is not None)


def special_ids(tokenizer: Tokenizer, *, require_userlm: bool = True) -> SpecialIds:
    """Read the special-token ids from ``tokenizer``; raise UserError when one is missing."""

    def need(name: str) -> int:
        tid = tokenizer.token_id(name)
        if tid is None:
            raise UserError(f"tokenizer has no {name} token: not a Llama-3-style UserLM tokenizer")
        return tid

    end_conv = tokenizer.token_id(END_CONVERSATION)
    if end_conv is None and require_userlm:
        raise UserError(
            f"tokenizer has no {END_CONVERSATION} token: this is not a UserLM "
            "(info, prompt, chat and convert accept one with --allow-non-userlm)"
        )
    newline = tokenizer.encode("\n")
    if len(newline) != 1:
        raise UserError("tokenizer does not encode '\\n' as a single token")
    return SpecialIds(
        bos=tokenizer.token_id(BOS),
        eot=need(EOT),
        end_of_text=tokenizer.token_id(END_OF_TEXT),
        start_header=need(START_HEADER),
        end_header=need(END_HEADER),
        end_conversation=end_conv,
        newline=newline[0],
    )


class ChatFormat:
    """Renders messages to token ids in the UserLM format."""

    def __init__(self, tokenizer: Tokenizer, *, add_bos: bool = False, require_userlm: bool = True):
        self.tokenizer = tokenizer
        self.ids = special_ids(tokenizer, require_userlm=require_userlm)
        if add_bos and self.ids.bos is None:
            raise UserError(f"add_bos was asked for but the tokenizer has no {BOS} token")
        self.add_bos = add_bos
        self._role_ids = {role: tokenizer.encode(role) for role in ROLES}

    def start(self) -> list[int]:
        """Ids every conversation begins with (BOS or nothing)."""
        return [self.ids.bos] if self.add_bos else []

    def header(self, role: str) -> list[int]:
        if role not in self._role_ids:
            raise UserError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        return [self.ids.start_header, *self._role_ids[role], self.ids.end_header]

    def body(self, content: str) -> list[int]:
        """Ids of a message body: the newline after the header plus the content, as text."""
        return self.tokenizer.encode("\n" + content)

    def message(self, role: str, content: str) -> list[int]:
        return [*self.header(role), *self.body(content), self.ids.eot]

    def open_user(self) -> list[int]:
        return self.header("user")

    def render(self, messages: Iterable[Mapping[str, str]]) -> list[int]:
        """The full prompt for the next user turn: start + every message + the open user header."""
        ids = self.start()
        for m in messages:
            ids += self.message(m["role"], m["content"])
        return ids + self.open_user()

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=False)


def chat_format(tokenizer: Tokenizer, *, add_bos: bool = False, allow_non_userlm: bool = False) -> ChatFormat | None:
    """The UserLM format for a user model; None for a model without Llama-3 headers that was
    loaded with ``allow_non_userlm`` (e.g. an assistant with another chat template)."""
    try:
        return ChatFormat(tokenizer, add_bos=add_bos, require_userlm=not allow_non_userlm)
    except UserError:
        if allow_non_userlm:
            return None
        raise
