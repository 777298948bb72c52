"""Regex / JSON schema -> outlines-core Index over the model's vocabulary, plus its jump map."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import torch
from outlines_core import Index
from outlines_core.json_schema import build_regex_from_schema

from plait.constrained.jump_forward import JumpForwardMap, build_jump_forward_map
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# Compact JSON: no optional whitespace, so keys and punctuation are forced and can be jumped.
JSON_WHITESPACE = ""
# States whose masks a grammar keeps (~V bytes each); past this the cache is cleared.
MASK_CACHE_STATES = 4096


@dataclass(frozen=True, slots=True)
class GrammarKey:
    """``kind`` is "regex" or "json" (``spec`` the schema as JSON text)."""

    kind: str
    spec: str

    @property
    def field(self) -> str:
        return "regex" if self.kind == "regex" else "json_schema"


def to_regex(key: GrammarKey) -> str:
    """The regex a spec stands for; raises InvalidRequestError naming the field."""
    if key.kind == "regex":
        if not isinstance(key.spec, str) or not key.spec:
            raise InvalidRequestError("regex", "must be a non-empty string")
        return key.spec
    assert key.kind == "json", key.kind
    try:
        schema = json.loads(key.spec)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError("json_schema", f"is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError("json_schema", "must be a JSON object (a JSON schema)")
    try:
        return build_regex_from_schema(json.dumps(schema), JSON_WHITESPACE)
    except Exception as e:  # outlines raises ValueError/TypeError/KeyError for bad schemas
        raise InvalidRequestError("json_schema", f"invalid schema: {e}") from None


class CompiledGrammar:
    """One compiled constraint, shared (read-only but for the mask cache) by every request.

    ``disallowed(state)`` is a cached bool ``[V]`` row, True where a token may not follow
    ``state``; the stop ids are allowed exactly in accepting states.
    """

    def __init__(
        self,
        key: GrammarKey,
        regex: str,
        index: Index,
        jump_map: JumpForwardMap | None,
        vocab: TokenVocabulary,
    ) -> None:
        self.key = key
        self.regex = regex
        self.index = index
        self.jump_map = jump_map
        self.vocab = vocab
        self.initial_state: int = index.get_initial_state()
        self.eos_token_id = vocab.eos_token_id
        self._stop_ids = torch.tensor(vocab.stop_ids, dtype=torch.int64)
        self._masks: dict[int, torch.Tensor] = {}
        self._terminal: dict[int, bool] = {}
        self._lock = threading.Lock()

    def next_state(self, state: int, token_id: int) -> int | None:
        return self.index.get_next_state(state, token_id)

    def is_final(self, state: int) -> bool:
        return self.index.is_final_state(state)

    def is_terminal(self, state: int) -> bool:
        """Accepting with no way to continue: only a stop token may follow."""
        t = self._terminal.get(state)
        if t is None:
            allowed = self.index.get_allowed_tokens(state)
            t = self._terminal[state] = all(i == self.eos_token_id for i in allowed)
        return t

    def disallowed(self, state: int) -> torch.Tensor:
        mask = self._masks.get(state)
        if mask is not None:
            return mask
        allowed = self.index.get_allowed_tokens(state)
        mask = torch.ones(self.vocab.size, dtype=torch.bool)
        mask[torch.tensor(allowed, dtype=torch.int64)] = False
        mask[self.eos_token_id] = True
        if self.index.is_final_state(state):
            mask[self._stop_ids] = False
        with self._lock:
            if len(self._masks) >= MASK_CACHE_STATES:
                self._masks.clear()
            self._masks[state] = mask
        return mask


def compile_grammar(key: GrammarKey, vocab: TokenVocabulary) -> CompiledGrammar:
    """Builds the Index (the slow part: DFA states x vocabulary) and the jump map.

    Raises InvalidRequestError for a spec that is malformed or that outlines cannot compile.
    """
    regex = to_regex(key)
    try:
        index = Index(regex, vocab.vocabulary)
    except Exception as e:
        raise InvalidRequestError(key.field, f"cannot be compiled: {e}") from None
    return CompiledGrammar(key, regex, index, build_jump_forward_map(regex), vocab)
