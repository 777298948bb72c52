"""Typed generation (``gen(dtype=...)``, ``gen_int``, ``gen_string``) as regex constraints."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.runtime.errors import InvalidRequestError

# SGLang's patterns. REGEX_STR avoids ".*": interegular (jump-forward) cannot use it.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""


@dataclass(slots=True)
class TypedConstraint:
    """The regex a dtype becomes, and the stop strings added with it."""

    regex: str
    stop: list[str] = field(default_factory=list)


_BY_NAME = {
    "int": TypedConstraint(REGEX_INT, [" ", "\n"]),
    "float": TypedConstraint(REGEX_FLOAT, [" ", "\n"]),
    "bool": TypedConstraint(REGEX_BOOL),
    "str": TypedConstraint(REGEX_STR),
}


def dtype_to_regex(dtype: type | str) -> TypedConstraint:
    """``int``/``float``/``bool``/``str`` (the type or its name) to its constraint.

    Numbers stop at a space or newline, as SGLang's runtime does, so ``"42 "`` yields ``"42"``.
    """
    name = dtype.__name__ if isinstance(dtype, type) else dtype
    constraint = _BY_NAME.get(name) if isinstance(name, str) else None
    if constraint is None:
        raise InvalidRequestError("dtype", f"must be int, float, bool or str, got {dtype!r}")
    return TypedConstraint(constraint.regex, list(constraint.stop))
