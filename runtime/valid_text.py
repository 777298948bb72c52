"""Strings that cross a boundary must be valid Unicode: a lone UTF-16 surrogate (``"\\ud800"``,
legal in JSON and in a Python ``str``) cannot be encoded as UTF-8, so msgpack, the tokenizer
and every log line would fail on it far from where it came in."""

from __future__ import annotations

from typing import Any

from plait.runtime.errors import InvalidRequestError


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(field: str, value: Any) -> str:
    """Returns ``value`` if it is a str that encodes as UTF-8; InvalidRequestError otherwise."""
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, got {type(value).__name__}")
    if not is_valid_unicode(value):
        raise InvalidRequestError(field, "is not valid Unicode (a lone UTF-16 surrogate)")
    return value
