"""The tiny assistant's own chat format (normal direction: loss on assistant turns).

Llama-3-style, without the date preamble and without BOS::

    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>     (per message)
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                     (add_generation_prompt)

The ``\\n\\n`` and the content are tokenized separately; with the Llama-3 split
regex this equals tokenizing the rendered template text, so a runtime may use
either ``render`` below or ``chat_template.jinja``.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..text.prompt_format import END_HEADER, EOT, START_HEADER
from ..util.errors import UserError
from ..text.tokenizer import Tokenizer

ASSISTANT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

IGNORE = -100


class AssistantFormat:
    """Renders messages to ids in the assistant format; ``sample`` adds labels on assistant turns."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = {}
        for name in (START_HEADER, END_HEADER, EOT):
            tid = tokenizer.token_id(name)
            if tid is None:
                raise UserError(f"tokenizer has no {name} token: not a Llama-3-style tokenizer")
            ids[name] = tid
        self.start_header, self.end_header, self.eot = ids[START_HEADER], ids[END_HEADER], ids[EOT]
        self.sep = tokenizer.encode("\n\n")
        self._roles: dict[str, list[int]] = {}

    def header(self, role: str) -> list[int]:
        if role not in self._roles:
            self._roles[role] = self.tokenizer.encode(role)
        return [self.start_header, *self._roles[role], self.end_header, *self.sep]

    def render(self, messages: Iterable[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids += self.header(m["role"]) + self.tokenizer.encode(m["content"]) + [self.eot]
        if add_generation_prompt:
            ids += self.header("assistant")
        return ids

    def sample(self, messages: Iterable[Mapping[str, str]]) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, labels, message start positions): labels are the assistant contents + eot."""
        ids: list[int] = []
        labels: list[int] = []
        starts: list[int] = []
        for m in messages:
            starts.append(len(ids))
            head = self.header(m["role"])
            body = self.tokenizer.encode(m["content"]) + [self.eot]
            ids += head + body
            labels += [IGNORE] * len(head) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
        return ids, labels, starts
