"""The outlines-core backend: a regex (a JSON schema becomes one) compiled to a token-level DFA
index, plus interegular's character DFA for jump-forward."""

from __future__ import annotations

import codecs
import pickle
import threading
from typing import Any

import numpy as np
import torch
from outlines_core import Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from plait.constrained.grammar import CompiledGrammar, GrammarCompiler, GrammarMatcher
from plait.constrained.jump_forward import JumpForwardMap, build_jump_forward_map
from plait.constrained.schema_check import check_schema, node_types, parse_schema
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# Compact JSON: no optional whitespace, so keys and punctuation are forced and can be jumped.
JSON_WHITESPACE = ""
# States whose masks a grammar keeps (V/8 bytes each); past this the cache is cleared.
MASK_CACHE_STATES = 4096
FORMATS = frozenset({"date-time", "date", "time", "uuid", "uri", "email"})
# outlines-core turns these into nothing (or, for oneOf/allOf, into a looser alternation)
_IGNORED = frozenset(
    "minimum maximum exclusiveMinimum exclusiveMaximum multipleOf not if then else contains "
    "minContains maxContains dependentRequired dependentSchemas dependencies patternProperties "
    "propertyNames minProperties maxProperties unevaluatedProperties unevaluatedItems "
    "oneOf allOf".split()
)


def refuse(keyword: str, value: Any, node: dict[str, Any]) -> str | None:
    """Why outlines-core would not enforce ``keyword: value`` exactly (None: it does)."""
    if keyword in _IGNORED:
        return "outlines-core ignores it or enforces a looser constraint"
    if keyword == "uniqueItems" and value is True:
        return "item uniqueness is not supported"
    if keyword == "anyOf" and ("type" in node or "properties" in node):
        return "anyOf next to type/properties is not combined with them"
    if keyword == "format" and value not in FORMATS:
        return f"format {value!r} is not one of {sorted(FORMATS)}"
    if keyword == "$ref" and isinstance(value, str) and not value.startswith("#"):
        return "only local references ('#...') are resolved"
    if keyword == "additionalProperties" and isinstance(value, dict):
        # outlines-core 0.2.14 leaves the value alternation ungrouped: '{0}' matches
        return "a schema for additional properties is not supported (true / false only)"
    if keyword == "properties" and isinstance(value, dict) and {} in value.values():
        # the any-value alternation is left ungrouped there too: the whole schema then admits
        # a bare value ('94')
        return "a property that takes any value ({}) is not supported"
    if keyword in _OBJECT_KEYWORDS and node_types(node) and "object" not in node_types(node):
        return f"{keyword} next to type {node['type']!r}: outlines-core builds an object"
    if keyword == "pattern" and isinstance(value, str) and _loose_pattern(value):
        return (
            "a pattern whose characters can include '\"', '\\' or control characters "
            "(., [^...], \\s, \\S, \\W, \\D) would break out of the JSON string"
        )
    return None


# object keywords outlines-core turns into an object regex whatever the node's type says
_OBJECT_KEYWORDS = frozenset({"properties", "additionalProperties", "required"})


def _loose_pattern(pattern: str) -> bool:
    """Whether outlines-core, which puts a pattern inside the JSON string's quotes as it is,
    could let it match a quote, a backslash or a raw control character: an unescaped ``.`` or
    ``"``, a negated class, or a wide class (``\\s \\S \\W \\D``). Conservative: ``[.]`` counts."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1 : i + 2] in ("s", "S", "W", "D"):
                return True
            i += 2
            continue
        if c in '."' or (c == "[" and pattern[i + 1 : i + 2] == "^"):
            return True
        i += 1
    return False


def to_regex(key: GrammarKey) -> str:
    """The regex a spec stands for; raises InvalidRequestError naming the field."""
    if key.kind == "regex":
        if not isinstance(key.spec, str) or not key.spec:
            raise InvalidRequestError("regex", "must be a non-empty string")
        return key.spec
    if key.kind != "json":
        msg = "is not supported by the outlines grammar backend (use --grammar-backend xgrammar)"
        raise InvalidRequestError(key.field, msg)
    schema = parse_schema(key.spec)
    check_schema(schema, "outlines", refuse)
    try:
        return build_regex_from_schema(key.spec, JSON_WHITESPACE)
    except Exception as e:  # outlines raises ValueError/TypeError/KeyError for bad schemas
        raise InvalidRequestError("json_schema", f"invalid schema: {e}") from None


class OutlinesCompiler(GrammarCompiler):
    name = "outlines"

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab
        self._vocabulary: Vocabulary | None = None

    def compile_payload(self, key: GrammarKey) -> bytes:
        regex = to_regex(key)
        if self._vocabulary is None:
            mapping: dict[bytes, list[int]] = {}
            for i, b in enumerate(self.vocab.token_bytes):
                if b is not None:
                    mapping.setdefault(b, []).append(i)
            self._vocabulary = Vocabulary(self.vocab.eos_token_id, mapping)
        try:
            index = Index(regex, self._vocabulary)
        except Exception as e:
            raise InvalidRequestError(key.field, f"cannot be compiled: {e}") from None
        return pickle.dumps({"regex": regex, "index": index}, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar:
        """Builds the jump map here: interegular's FSM does not survive pickling (its
        ``anything_else`` sentinel is compared by identity)."""
        saved = pickle.loads(payload)  # our own compile process (or cache directory) wrote it
        jump_map = build_jump_forward_map(saved["regex"])
        return OutlinesGrammar(key, saved["regex"], saved["index"], jump_map, self.vocab)


class OutlinesGrammar(CompiledGrammar):
    """``bitmask(state)`` is a cached packed row (int32 ``[W]``) of the tokens allowed after
    ``state``; the stop ids are allowed exactly in accepting states."""

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
        self.memory_bytes = 64 * len(regex) + 1024  # the Index lives in Rust: a nominal size
        self.initial_state: int = index.get_initial_state()
        self.words = (vocab.size + 31) // 32
        self._masks: dict[int, np.ndarray] = {}
        self._terminal: dict[int, bool] = {}
        self._lock = threading.Lock()

    def matcher(self) -> GrammarMatcher:
        return OutlinesMatcher(self)

    def next_state(self, state: int, token_id: int) -> int | None:
        return self.index.get_next_state(state, token_id)

    def is_final(self, state: int) -> bool:
        return self.index.is_final_state(state)

    def is_terminal(self, state: int) -> bool:
        t = self._terminal.get(state)
        if t is None:
            eos = self.vocab.eos_token_id
            allowed = self.index.get_allowed_tokens(state)
            t = self._terminal[state] = all(i == eos for i in allowed)
        return t

    def bitmask(self, state: int) -> np.ndarray:
        row = self._masks.get(state)
        if row is not None:
            return row
        allowed = np.zeros(self.words * 32, dtype=np.bool_)
        allowed[np.asarray(self.index.get_allowed_tokens(state), dtype=np.int64)] = True
        allowed[self.vocab.eos_token_id] = False
        if self.index.is_final_state(state):
            allowed[self.vocab.stop_ids] = True
        row = np.packbits(allowed, bitorder="little").view(np.int32)
        with self._lock:
            if len(self._masks) >= MASK_CACHE_STATES:
                self._masks.clear()
            self._masks[state] = row
        return row


class OutlinesMatcher(GrammarMatcher):
    """``states[i]`` / ``char_states[i]`` / ``pending[i]``: the token-DFA state, the jump map's
    character state (None: no jumps) and the undecoded UTF-8 bytes after ``i`` tokens."""

    def __init__(self, grammar: OutlinesGrammar) -> None:
        self.g = grammar
        jm = grammar.jump_map
        self.states: list[int] = [grammar.initial_state]
        self.char_states: list[int | None] = [jm.initial if jm is not None else None]
        self.pending: list[bytes] = [b""]
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        bitmask[index].numpy()[:] = self.g.bitmask(self.states[-1])

    def accept_token(self, token_id: int) -> bool:
        nxt = self.g.next_state(self.states[-1], token_id)
        if nxt is None:
            return False
        self.states.append(nxt)
        jm, cstate = self.g.jump_map, self.char_states[-1]
        piece = self._decoder.decode(self.g.vocab.token_bytes[token_id] or b"")
        if jm is not None and cstate is not None:
            cstate = jm.step(cstate, piece)
        self.char_states.append(cstate)
        self.pending.append(self._decoder.getstate()[0])
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            del self.states[-num_tokens:], self.char_states[-num_tokens:]
            del self.pending[-num_tokens:]
            self._decoder.setstate((self.pending[-1], 0))

    def can_end(self) -> bool:
        return self.g.is_final(self.states[-1])

    def must_end(self) -> bool:
        return self.g.is_terminal(self.states[-1])

    def forced_string(self) -> str:
        jm = self.g.jump_map
        if jm is None or self.pending[-1]:
            return ""
        return jm.forced_string(self.char_states[-1])
