"""A model's chat template as the frontend uses it: the text around one message of each role.

The Hugging Face template is a Jinja program over a whole conversation; the frontend appends
one role at a time, so it needs each role's prefix and suffix. They are read off the template by
rendering a conversation of sentinel messages one message longer each time and splitting each
new piece at its sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00plait-{}\x00"


@dataclass(slots=True)
class ChatTemplate:
    """``markers[role] = (prefix, suffix)``; ``default_system_prompt`` is the system message the
    template inserts when a conversation starts without one (None if it inserts nothing)."""

    markers: dict[str, tuple[str, str]]
    default_system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": {r: {"prefix": p, "suffix": s} for r, (p, s) in self.markers.items()},
            "default_system_prompt": self.default_system_prompt,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatTemplate:
        roles = d["roles"]
        return cls(
            {r: (m["prefix"], m["suffix"]) for r, m in roles.items()},
            d.get("default_system_prompt"),
        )


# ChatML: what a model without a chat template gets, and the wire format of OpenAI chat models.
CHATML = ChatTemplate({r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES})


def chat_template_of(tokenizer: Any) -> ChatTemplate:
    """The role markers of ``tokenizer``'s chat template; ChatML if it has none or if the
    template does not render a system / user / assistant conversation piece by piece."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return CHATML
    try:
        return _read_markers(tokenizer)
    except Exception:  # a template that raises on some role order, or renders non-incrementally
        return CHATML


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def _read_markers(tokenizer: Any) -> ChatTemplate:
    messages = [{"role": r, "content": _SENTINEL.format(r)} for r in ROLES]
    markers: dict[str, tuple[str, str]] = {}
    before = ""
    for i, role in enumerate(ROLES):
        text = _render(tokenizer, messages[: i + 1])
        if not text.startswith(before):
            raise ValueError("the template does not render incrementally")
        prefix, sep, suffix = text[len(before) :].partition(messages[i]["content"])
        if not sep:
            raise ValueError(f"the template drops the {role} message")
        markers[role] = (prefix, suffix)
        before = text
    user = messages[1]["content"]
    user_alone = _render(tokenizer, [messages[1]])
    tail = "".join((markers["user"][0], user, markers["user"][1]))
    default = None
    if user_alone.endswith(tail) and len(user_alone) > len(tail):
        lead = user_alone[: -len(tail)]
        sys_prefix, sys_suffix = markers["system"]
        if lead.startswith(sys_prefix) and lead.endswith(sys_suffix):
            default = lead[len(sys_prefix) : len(lead) - len(sys_suffix)]
    return ChatTemplate(markers, default)
