"""The unit of training data: one real conversation plus its intent."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Dialogue:
    """A cleaned conversation: ``messages`` alternate user/assistant, start with a user turn
    and end with an assistant turn; ``intent`` is one sentence "You are a user chatting with ..."."""

    id: str
    messages: list[dict] = field(default_factory=list)  # [{"role": "user"|"assistant", "content": str}]
    intent: str = ""

    def user_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]

    def to_json(self) -> dict:
        return {"id": self.id, "messages": self.messages, "intent": self.intent}

    @classmethod
    def from_json(cls, obj: dict) -> "Dialogue":
        return cls(id=obj["id"], messages=obj["messages"], intent=obj.get("intent", ""))
