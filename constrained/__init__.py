"""Constrained decoding: regex / JSON schema / EBNF / structural tags compiled by a grammar backend
(``auto`` by default: xgrammar, then llguidance for what xgrammar refuses; each also alone, and
outlines-core) in a killable process; vocabulary bitmasks, jump-forward, fail-closed checks."""

from plait.constrained.typed import (
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    TypedConstraint,
    dtype_to_regex,
)

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "TypedConstraint",
    "dtype_to_regex",
]
