"""What a request asks its output to match: the key a grammar is compiled and cached under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# kind -> the SamplingParams field that carries it (errors name the field)
KIND_FIELDS = {
    "regex": "regex",
    "json": "json_schema",
    "ebnf": "ebnf",
    "structural_tag": "structural_tag",
}


@dataclass(frozen=True, slots=True)
class GrammarKey:
    """``kind`` is one of ``KIND_FIELDS``; ``spec`` the field's text (a JSON schema and a
    structural tag as JSON text)."""

    kind: str
    spec: str

    @property
    def field(self) -> str:
        return KIND_FIELDS[self.kind]


def grammar_key(params: Any) -> GrammarKey | None:
    """The key of a request's ``SamplingParams`` (at most one constraint is set: ``verify``)."""
    for kind, name in KIND_FIELDS.items():
        value = getattr(params, name, None)
        if value is not None:
            return GrammarKey(kind, value)
    return None
