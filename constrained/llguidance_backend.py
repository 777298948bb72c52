"""The llguidance backend: an Earley parser over a lazily built lexer DFA (no per-grammar token
index to precompute, so compiles take milliseconds), strict JSON schemas (an unimplemented keyword
is an error), regex, Lark / GBNF grammars, structural tags, forced bytes for jump-forward.

Its compiled object (an ``LLMatcher``) does not cross a process: the compile process builds one
under the time limit and memory cap (the costly, unbounded part is the grammar and lexer build)
and sends back the grammar text; the serving process builds it again under llguidance's own
limits (``LIMITS``: grammar size, lexer fuel, Earley items per step)."""

from __future__ import annotations

import json
from typing import Any

import llguidance as llg
import torch

from plait.constrained.closed_objects import close_objects
from plait.constrained.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    GrammarMatcher,
    GrammarStepError,
)
from plait.constrained.schema_check import drop_annotation_formats, keyword_paths, parse_schema
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# llguidance's defaults, spelled out: they bound the serving-side build and every mask step.
LIMITS = dict(
    max_items_in_row=2000,
    initial_lexer_fuel=1_000_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    max_lexer_states=250_000,
    max_grammar_size=500_000,
)
# Compact JSON, as with xgrammar: keys and punctuation are forced text that jump-forward skips.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
# Bytes llguidance marks special tokens with (they never match grammar text).
_SPECIAL = b"\xff"


def limits() -> llg.LLParserLimits:
    return llg.LLParserLimits(**LIMITS, verbose_errors=False)


class _Tokenizer:
    """What ``llg.TokenizerWrapper`` reads: token bytes, EOS, and an encoder llguidance calls for
    forced text (the model's tokenizer; a greedy one in the compile process, which computes no
    masks)."""

    def __init__(self, vocab: TokenVocabulary, greedy: llg.LLTokenizer | None) -> None:
        self.eos_token_id = vocab.eos_token_id
        self.bos_token_id = None
        self.tokens = [
            b if b is not None else _SPECIAL + b"<%d>" % i for i, b in enumerate(vocab.token_bytes)
        ]
        self.special_token_ids = [i for i, b in enumerate(vocab.token_bytes) if b is None]
        self._hf = vocab.tokenizer
        self._greedy = greedy

    def __call__(self, text: str) -> list[int]:
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False)
        assert self._greedy is not None
        return self._greedy.greedy_tokenize(text)


def make_tokenizer(vocab: TokenVocabulary) -> llg.LLTokenizer:
    def build(greedy: llg.LLTokenizer | None) -> llg.LLTokenizer:
        wrapper = llg.TokenizerWrapper(_Tokenizer(vocab, greedy))
        return llg.LLTokenizer(wrapper, n_vocab=vocab.size, eos_token=list(vocab.stop_ids))

    if vocab.tokenizer is not None:
        return build(None)
    return build(build(None))  # the first one only tokenizes greedily, from its own trie


class LLGuidanceCompiler(GrammarCompiler):
    name = "llguidance"

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab
        self._tokenizer: llg.LLTokenizer | None = None

    @property
    def tokenizer(self) -> llg.LLTokenizer:
        if self._tokenizer is None:
            self._tokenizer = make_tokenizer(self.vocab)
        return self._tokenizer

    def compile_payload(self, key: GrammarKey) -> bytes:
        grammar = to_grammar(key)
        check_matcher(key, llg.LLMatcher(self.tokenizer, grammar, log_level=0, limits=limits()))
        return grammar.encode()

    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar:
        return LLGuidanceGrammar(key, payload.decode(), self.tokenizer)


def to_grammar(key: GrammarKey) -> str:
    """llguidance's grammar text for a key; InvalidRequestError naming the field."""
    if key.kind == "json":
        schema = close_objects(drop_annotation_formats(parse_schema(key.spec)))
        return llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=JSON_OPTIONS, overrides={"lenient": False}
        )
    if key.kind == "regex":
        if not key.spec:
            raise InvalidRequestError("regex", "must be a non-empty string")
        return llg.LLMatcher.grammar_from_regex(key.spec)
    if key.kind == "ebnf":
        try:  # GBNF (SGLang's and llama.cpp's ``::=`` syntax) is converted; Lark passes
            return llg.grammar_from("ebnf", key.spec)
        except ValueError as e:
            raise InvalidRequestError(
                "ebnf", f"cannot be compiled by the llguidance grammar backend: {e}"
            ) from None
    assert key.kind == "structural_tag", key.kind
    return llg.StructTag.to_grammar(structural_tags(key.spec), assume_special=False)


def structural_tags(spec: str) -> list[llg.StructTag]:
    """SGLang's ``{"structures": [{"begin", "schema", "end"}], "triggers": [...]}``: each
    structure starts at the trigger its ``begin`` starts with."""
    try:
        tag = json.loads(spec)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError("structural_tag", f"is not valid JSON: {e}") from None
    structures = tag.get("structures") if isinstance(tag, dict) else None
    triggers = tag.get("triggers") if isinstance(tag, dict) else None
    if not isinstance(structures, list) or not isinstance(triggers, list) or not structures:
        raise InvalidRequestError("structural_tag", "needs a structures list and a triggers list")
    if not all(isinstance(t, str) and t for t in triggers):
        raise InvalidRequestError("structural_tag", "triggers must be non-empty strings")
    out = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("begin", "end")):
            msg = f"structures[{i}] must have string begin and end"
            raise InvalidRequestError("structural_tag", msg)
        trigger = next((t for t in triggers if s["begin"].startswith(t)), None)
        if trigger is None:
            msg = f"structures[{i}].begin does not start with one of the triggers"
            raise InvalidRequestError("structural_tag", msg)
        schema = s.get("schema", s.get("parameters", True))
        if not isinstance(schema, (dict, bool)):
            raise InvalidRequestError("structural_tag", f"structures[{i}].schema must be a schema")
        grammar = _json_grammar(schema)
        out.append(llg.StructTag(trigger=trigger, begin=s["begin"], grammar=grammar, end=s["end"]))
    return out


def _json_grammar(schema: dict[str, Any] | bool) -> dict[str, Any]:
    """A schema with the compile options every JSON grammar here uses (``x-guidance``)."""
    if schema is True or schema == {}:
        return {"x-guidance": {**JSON_OPTIONS, "lenient": False}}
    if schema is False:
        return {"not": {}, "x-guidance": {**JSON_OPTIONS, "lenient": False}}
    return {**close_objects(schema), "x-guidance": {**JSON_OPTIONS, "lenient": False}}


def check_matcher(key: GrammarKey, m: llg.LLMatcher) -> llg.LLMatcher:
    if m.is_error():
        raise InvalidRequestError(key.field, _message(key, m.get_error()))
    return m


def _message(key: GrammarKey, error: str) -> str:
    """llguidance's error; for a schema, naming the keyword and its paths where it says which."""
    text = _first_line(error)
    keywords, why = _keywords(text)
    if key.kind == "json" and keywords:
        schema = json.loads(key.spec)
        parts = [f"keyword {k!r} at {', '.join(keyword_paths(schema, k)) or '#'}" for k in keywords]
        return f"{'; '.join(parts)} cannot be enforced by the llguidance grammar backend ({why})"
    return f"cannot be compiled by the llguidance grammar backend: {text}"


def _keywords(text: str) -> tuple[list[str], str]:
    """The schema keywords an llguidance error is about, and why."""
    if text.startswith("Unimplemented keys:"):
        try:
            return list(json.loads(text.split(":", 1)[1])), "not implemented"
        except ValueError:
            return [], text
    if text.startswith("Unknown format:"):
        return ["format"], f"format {text.split(':', 1)[1].strip()!r} is not supported"
    if text.startswith("Resource '") and "not present in a registry" in text:
        return ["$ref"], "only references inside the schema are resolved"
    if text.startswith("oneOf constraints are not supported"):
        return ["oneOf"], "its branches are not provably disjoint"
    return [], text


class LLGuidanceGrammar(CompiledGrammar):
    """Holds a matcher at the start state; each request's matcher is a deep copy of it."""

    def __init__(self, key: GrammarKey, grammar: str, tokenizer: llg.LLTokenizer) -> None:
        self.key = key
        self.grammar = grammar
        self._start = check_matcher(
            key, llg.LLMatcher(tokenizer, grammar, log_level=0, limits=limits())
        )
        self.memory_bytes = 16 * len(grammar) + 4096  # the parser lives in Rust: a nominal size

    def matcher(self) -> GrammarMatcher:
        return LLGuidanceMatcher(self._start.deep_copy())


class LLGuidanceMatcher(GrammarMatcher):
    def __init__(self, m: llg.LLMatcher) -> None:
        self.m = m

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        row = bitmask[index]
        self.m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        # a step over llguidance's limits (or a bug) leaves the matcher in its error state,
        # whose mask allows only the stop tokens: fail the request rather than end unfinished
        self._check()

    def _check(self) -> None:
        if self.m.is_error():
            raise GrammarStepError(f"llguidance: {_first_line(self.m.get_error())}")

    def accept_token(self, token_id: int) -> bool:
        if self.m.validate_tokens([token_id]) != 1:
            self._check()
            return False
        ok = self.m.consume_token(token_id)
        self._check()
        return ok

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.m.rollback(num_tokens)

    def can_end(self) -> bool:
        return self.m.is_accepting()

    def must_end(self) -> bool:
        return self.m.is_stopped()

    def forced_string(self) -> str:
        forced = self.m.compute_ff_bytes()
        self._check()
        try:
            return forced.decode()
        except UnicodeDecodeError as e:  # forced text may end inside a character
            return forced[: e.start].decode()


def _first_line(error: str) -> str:
    return error.strip().splitlines()[0] if error.strip() else "unknown error"
