"""Constrained decoding: regex / JSON schema to an FSM index, vocabulary masks, jump-forward."""

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
