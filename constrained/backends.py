"""The grammar backends by name (``--grammar-backend``); each imports its library lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.runtime.config import GRAMMAR_BACKENDS

if TYPE_CHECKING:
    from plait.constrained.grammar import GrammarCompiler
    from plait.constrained.vocabulary import TokenVocabulary


def make_compiler(name: str, vocab: TokenVocabulary) -> GrammarCompiler:
    if name == "xgrammar":
        from plait.constrained.xgrammar_backend import XGrammarCompiler

        return XGrammarCompiler(vocab)
    if name == "outlines":
        from plait.constrained.outlines_backend import OutlinesCompiler

        return OutlinesCompiler(vocab)
    if name == "llguidance":
        from plait.constrained.llguidance_backend import LLGuidanceCompiler

        return LLGuidanceCompiler(vocab)
    if name == "auto":
        from plait.constrained.fallback_backend import FallbackCompiler

        return FallbackCompiler(vocab)
    raise ValueError(f"unknown grammar backend {name!r} (one of {GRAMMAR_BACKENDS})")


def library_version(name: str) -> str:
    from importlib.metadata import version

    if name == "auto":
        from plait.constrained.fallback_backend import CHAIN

        return "+".join(library_version(b) for b in CHAIN)
    dist = {"xgrammar": "xgrammar", "outlines": "outlines_core", "llguidance": "llguidance"}[name]
    return version(dist)
