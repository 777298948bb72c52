"""``auto`` (the default): llguidance, and xgrammar for what llguidance refuses (both fail
closed, so the chain does too). llguidance goes first because it enforces everything it compiles
(no invalid output on the JSONSchemaBench sample; xgrammar 0.2.9 let through surrogate code points
and enums contradicting their ``type`` until plait narrowed them) and compiles every sample schema
xgrammar does, plus many it must refuse (``allOf`` intersections, ``$ref`` with siblings,
``multipleOf`` on numbers, ``patternProperties``, ``minProperties``), in milliseconds. Its masks
cost more per step than xgrammar's, which on a CPU forward is noise. xgrammar takes what only it
parses (its EBNF extensions such as lookahead)."""

from __future__ import annotations

from plait.constrained.grammar import CompiledGrammar, GrammarCompiler, compile_stages
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary

# The backends ``auto`` tries, in order.
CHAIN = ("llguidance", "xgrammar")


class FallbackCompiler(GrammarCompiler):
    """Compiles with the first backend of ``CHAIN`` that accepts the key; the payload names it.
    Refused by all: the error of each, naming the keyword and path where they do. Each backend
    is a stage: the grammar cache gives each its own time limit, so a slow refusal by one
    leaves the next its whole budget."""

    name = "auto"

    def __init__(self, vocab: TokenVocabulary) -> None:
        from plait.constrained.backends import make_compiler

        self.compilers = {name: make_compiler(name, vocab) for name in CHAIN}

    def stages(self) -> tuple[str, ...]:
        return CHAIN

    def compile_stage(self, key: GrammarKey, stage: str) -> bytes:
        return stage.encode() + b"\0" + self.compilers[stage].compile_payload(key)

    def compile_payload(self, key: GrammarKey) -> bytes:
        return compile_stages(key, self.stages(), self.compile_stage)

    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar:
        name, _, rest = payload.partition(b"\0")
        return self.compilers[name.decode()].load(key, rest)
