"""The default backend: xgrammar (pushdown automaton, adaptive token-mask cache, jump-forward
strings, EBNF and structural tags)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jsonschema
import numpy as np
import referencing.exceptions
import torch
import xgrammar as xgr

from plait.constrained.grammar import CompiledGrammar, GrammarCompiler, GrammarMatcher
from plait.constrained.schema_check import check_schema, keyword_paths, parse_schema
from plait.constrained.schema_rewrite import NON_VALIDATING, distribute_alternatives
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# Formats xgrammar 0.2.9 turns into a grammar (checked by feeding it a violating string).
FORMATS = frozenset(
    "email date time date-time duration ipv4 ipv6 hostname uuid uri uri-reference "
    "uri-template json-pointer relative-json-pointer".split()
)
# JSON Schema's own formats: one of these that xgrammar would ignore is refused. Other names
# ("semver", "int32") are annotations no validator checks, and pass.
# Tokens the compile process walks through each new grammar (see ``_probe``).
PROBE_STEPS = 16
STANDARD_FORMATS = FORMATS | {"idn-email", "idn-hostname", "iri", "iri-reference", "regex"}
# Keywords xgrammar ignores or only approximates (it accepts instances that violate them).
_IGNORED = {
    "not": "negation is not supported",
    "if": "conditionals are not supported",
    "then": "conditionals are not supported",
    "else": "conditionals are not supported",
    "contains": "array containment is not supported",
    "minContains": "array containment is not supported",
    "maxContains": "array containment is not supported",
    "dependentRequired": "property dependencies are not supported",
    "dependentSchemas": "property dependencies are not supported",
    "dependencies": "property dependencies are not supported",
    "unevaluatedItems": "unevaluated items are not supported",
    "maxDigits": "an outlines-only keyword; use minimum / maximum",
    "minDigits": "an outlines-only keyword; use minimum / maximum",
    "maxDigitsInteger": "an outlines-only keyword; use minimum / maximum",
    "minDigitsInteger": "an outlines-only keyword; use minimum / maximum",
    "maxDigitsFraction": "an outlines-only keyword; use minimum / maximum",
    "minDigitsFraction": "an outlines-only keyword; use minimum / maximum",
}


def refuse(keyword: str, value: Any, node: dict[str, Any]) -> str | None:
    """Why xgrammar would not enforce ``keyword: value`` exactly (None: it does)."""
    if keyword in _IGNORED:
        return _IGNORED[keyword]
    if keyword == "uniqueItems" and value is True:
        return "item uniqueness is not supported"
    if keyword in ("anyOf", "oneOf", "allOf", "$ref") and any(
        k not in NON_VALIDATING and k != keyword for k in node
    ):
        return "xgrammar drops the keywords next to it"
    if keyword == "allOf" and isinstance(value, list) and len(value) > 1:
        return "intersections of several schemas are not supported"
    if keyword == "format" and value in STANDARD_FORMATS and value not in FORMATS:
        return f"format {value!r} is not one of {sorted(FORMATS)}"
    if keyword == "$ref" and isinstance(value, str) and not value.startswith("#"):
        return "only local references ('#...') are resolved"
    if keyword in ("enum", "const") and not _values_obey_siblings(keyword, value, node):
        return "xgrammar ignores the keywords next to it, and some of its values break them"
    if keyword == "multipleOf" and not (isinstance(value, int) and node.get("type") == "integer"):
        return "only integer multipleOf on integers is supported"
    return None


def _values_obey_siblings(keyword: str, value: Any, node: dict[str, Any]) -> bool:
    """xgrammar emits an ``enum`` / ``const``'s values alone: exact only when every value is
    valid against the validating keywords next to it (unresolvable siblings count as not)."""
    siblings = {
        k: v for k, v in node.items() if k not in NON_VALIDATING and k not in ("enum", "const")
    }
    if not siblings:
        return True
    values = value if keyword == "enum" and isinstance(value, list) else [value]
    try:
        validator = jsonschema.validators.validator_for(siblings)(siblings)
        return all(validator.is_valid(v) for v in values)
    except (jsonschema.exceptions.SchemaError, referencing.exceptions.Unresolvable):
        return False


class XGrammarCompiler(GrammarCompiler):
    """Compact JSON (``,`` and ``:`` with no spaces), so keys and punctuation are forced text
    that jump-forward skips; strict mode (no properties beyond the schema's)."""

    name = "xgrammar"

    def __init__(self, vocab: TokenVocabulary) -> None:
        self.vocab = vocab
        self._info: xgr.TokenizerInfo | None = None
        self._compiler: xgr.GrammarCompiler | None = None

    @property
    def info(self) -> xgr.TokenizerInfo:
        if self._info is None:
            v = self.vocab
            encoded = [b or b"" for b in v.token_bytes]  # empty: never allowed (special)
            self._info = xgr.TokenizerInfo(
                encoded, xgr.VocabType.RAW, vocab_size=v.size, stop_token_ids=v.stop_ids
            )
        return self._info

    def compile_payload(self, key: GrammarKey) -> bytes:
        if self._compiler is None:
            self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        with _stderr_lines() as warnings:
            compiled = self._compile(self._compiler, key)
        if warnings:
            raise InvalidRequestError(key.field, _inexact(key, warnings))
        _probe(compiled, self.info.vocab_size)
        return compiled.serialize_json().encode()

    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar:
        return XGrammar(key, xgr.CompiledGrammar.deserialize_json(payload.decode(), self.info))

    def _compile(self, c: xgr.GrammarCompiler, key: GrammarKey) -> xgr.CompiledGrammar:
        if key.kind == "json":
            schema = distribute_alternatives(parse_schema(key.spec))
            check_schema(schema, self.name, refuse)
            return _wrap(
                key,
                lambda: c.compile_grammar(
                    json_safe(
                        xgr.Grammar.from_json_schema(
                            json.dumps(schema),
                            any_whitespace=False,
                            separators=(",", ":"),
                            strict_mode=True,
                        )
                    )
                ),
                "invalid schema",
            )
        if key.kind == "regex":
            return _wrap(key, lambda: c.compile_regex(key.spec))
        if key.kind == "ebnf":
            return _wrap(key, lambda: c.compile_grammar(key.spec))
        assert key.kind == "structural_tag", key.kind
        args = structural_tag_args(key.spec)
        return _wrap(
            key, lambda: c.compile_grammar(json_safe(xgr.Grammar.from_structural_tag(*args)))
        )


# xgrammar 0.2.9's JSON string characters, as its EBNF prints them: a length-bounded string
# repeats the first class, which admits raw control characters (invalid JSON: they must be
# escaped); every other string uses the second. Both admit the UTF-8 encodings of UTF-16
# surrogates (ED A0 80 ..), which are not valid UTF-8. The grammar goes through its EBNF text with
# each class narrowed to the characters JSON allows unescaped; narrowing only removes outputs.
LOOSE_STRING_CHARS = (r"[^\"\\\r\n]", r"[^\0-\x1f\"\\\r\n]")
JSON_STRING_CHAR = r"[^\0-\x1f\"\\\uD800-\uDFFF]"


def json_safe(grammar: xgr.Grammar) -> xgr.Grammar:
    """``grammar`` with no JSON-string class that admits a control character or a surrogate."""
    text = str(grammar)
    if not any(c in text for c in LOOSE_STRING_CHARS):
        return grammar
    for c in LOOSE_STRING_CHARS:
        text = text.replace(c, JSON_STRING_CHAR)
    return xgr.Grammar.from_ebnf(text)


def _probe(compiled: xgr.CompiledGrammar, vocab_size: int, steps: int = PROBE_STEPS) -> None:
    """Walks a few tokens (the lowest allowed id each time). xgrammar defers work to the
    matcher (for some nested repeats under the memory cap, all of it): a grammar whose first
    masks are slow fails here, inside the time limit, not in the serving process."""
    m = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab_size)
    stops = set(compiled.tokenizer_info.stop_token_ids)
    for _ in range(steps):
        m.fill_next_token_bitmask(mask, 0)
        bits = np.unpackbits(mask.numpy().view(np.uint8), count=vocab_size, bitorder="little")
        allowed = [int(t) for t in np.flatnonzero(bits[:4096] if bits[:4096].any() else bits)]
        token = next((t for t in allowed if t not in stops), None)
        if token is None or not m.accept_token(token):
            return


def structural_tag_args(spec: str) -> tuple[Any, ...]:
    """SGLang's ``{"type": "structural_tag", "structures": [{"begin", "schema", "end"}],
    "triggers": [...]}`` as xgrammar's (tags, triggers); xgrammar's own format (``"format"``)
    passes through. Each structure's schema is checked like a ``json_schema``."""
    try:
        tag = json.loads(spec)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError("structural_tag", f"is not valid JSON: {e}") from None
    if not isinstance(tag, dict):
        raise InvalidRequestError("structural_tag", "must be a JSON object")
    if "format" in tag:
        return (json.dumps(tag),)
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(structures, list) or not isinstance(triggers, list):
        raise InvalidRequestError("structural_tag", "needs a structures list and a triggers list")
    tags = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("begin", "end")):
            msg = f"structures[{i}] must have string begin and end"
            raise InvalidRequestError("structural_tag", msg)
        schema = s.get("schema", s.get("parameters", True))
        if not isinstance(schema, (dict, bool)):
            raise InvalidRequestError("structural_tag", f"structures[{i}].schema must be a schema")
        try:
            schema = distribute_alternatives(schema)
            check_schema(schema, "xgrammar", refuse)
        except InvalidRequestError as e:
            raise InvalidRequestError("structural_tag", f"structures[{i}]: {e.message}") from None
        tags.append(
            xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(schema), end=s["end"])
        )
    if not all(isinstance(t, str) and t for t in triggers):
        raise InvalidRequestError("structural_tag", "triggers must be non-empty strings")
    return tags, triggers


def _wrap(key: GrammarKey, compile_: Any, what: str = "cannot be compiled") -> xgr.CompiledGrammar:
    try:
        return compile_()
    except InvalidRequestError:
        raise
    except Exception as e:  # xgrammar raises RuntimeError / ValueError with its parser's text
        if "bad_alloc" in str(e):  # C++ allocation failure: the compile process's memory cap
            raise MemoryError(str(e)) from None
        raise InvalidRequestError(key.field, f"{what}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _inexact(key: GrammarKey, warnings: list[str]) -> str:
    """xgrammar warns where it falls back to a looser grammar (overlapping ``oneOf`` becomes
    ``anyOf``): that would be fail-open, so it is an error naming the keyword and paths."""
    text = warnings[0].split("Warning:", 1)[-1].strip()
    for keyword in ("oneOf", "allOf", "anyOf"):
        if keyword in text and key.kind == "json":
            paths = keyword_paths(json.loads(key.spec), keyword)
            return (
                f"keyword {keyword!r} at {', '.join(paths) or '#'} cannot be enforced exactly "
                f"by the xgrammar grammar backend ({text})"
            )
    return f"cannot be enforced exactly by the xgrammar grammar backend ({text})"


@contextmanager
def _stderr_lines() -> Iterator[list[str]]:
    """The warning lines xgrammar's C++ logger writes to fd 2 meanwhile (it has no Python
    hook). Only the compile process uses this, one compile at a time."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
            lines.extend(ln for ln in text.splitlines() if "Warning" in ln)


class XGrammar(CompiledGrammar):
    def __init__(self, key: GrammarKey, compiled: xgr.CompiledGrammar) -> None:
        self.key = key
        self.compiled = compiled
        self.memory_bytes = int(compiled.memory_size_bytes)

    def matcher(self) -> GrammarMatcher:
        return XGrammarMatcher(self.compiled)


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self.m = xgr.GrammarMatcher(compiled, max_rollback_tokens=-1)
        info = compiled.tokenizer_info
        self._stops = list(info.stop_token_ids)
        self._vocab_size = info.vocab_size
        self._probe: torch.Tensor | None = None

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, index)

    def accept_token(self, token_id: int) -> bool:
        return self.m.accept_token(token_id)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            self.m.rollback(num_tokens)

    def can_end(self) -> bool:
        return self.m.is_completed()

    def must_end(self) -> bool:
        if not self.m.is_completed():
            return False
        if self._probe is None:
            self._probe = xgr.allocate_token_bitmask(1, self._vocab_size)
        self.m.fill_next_token_bitmask(self._probe, 0)
        words = self._probe.numpy().view(np.uint32)[0]
        for t in self._stops:
            words[t // 32] &= np.uint32(0xFFFFFFFF ^ (1 << (t % 32)))
        return not words.any()

    def forced_string(self) -> str:
        return self.m.find_jump_forward_string()
