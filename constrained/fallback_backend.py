"""``auto`` (the default): llguidance, and xgrammar for what llguidance refuses (both fail
closed, so the chain does too). llguidance goes first because it enforces everything it compiles
(no invalid output on the JSONSchemaBench sample; xgrammar 0.2.9 let through surrogate code points
and enums contradicting their ``type`` until plait narrowed them) and compiles every sample schema
xgrammar does, plus many it must refuse (``allOf`` intersections, ``$ref`` with siblings,
``multipleOf`` on numbers, ``patternProperties``, ``minProperties``), in milliseconds. Its masks
cost more per step than xgrammar's, which on a CPU forward is noise. xgrammar takes what only it
parses (its EBNF extensions such as lookahead)."""

from __future__ import annotations

from plait.constrained.grammar import CompiledGrammar, GrammarCompiler
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# The backends ``auto`` tries, in order.
CHAIN = ("llguidance", "xgrammar")


class FallbackCompiler(GrammarCompiler):
    """Compiles with the first backend of ``CHAIN`` that accepts the key; the payload names it.
    Refused by all: the error of each, naming the keyword and path where they do."""

    name = "auto"

    def __init__(self, vocab: TokenVocabulary) -> None:
        from plait.constrained.backends import make_compiler

        self.compilers = {name: make_compiler(name, vocab) for name in CHAIN}

    def compile_payload(self, key: GrammarKey) -> bytes:
        errors: list[InvalidRequestError] = []
        for name, compiler in self.compilers.items():
            try:
                return name.encode() + b"\0" + compiler.compile_payload(key)
            except InvalidRequestError as e:
                errors.append(e)
        raise InvalidRequestError(key.field, "; ".join(e.message for e in errors))

    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar:
        name, _, rest = payload.partition(b"\0")
        return self.compilers[name.decode()].load(key, rest)
