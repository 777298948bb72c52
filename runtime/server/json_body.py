"""A request body's bytes to a JSON object: size, nesting and Unicode checked before any field.

The size is enforced while the body streams in (``Content-Length`` first, then the bytes as they
arrive), so an oversized body is refused without being held whole. Nesting is bounded before
``json.loads`` can recurse; every string (keys too) must be valid Unicode, so no lone surrogate
reaches the tokenizer, msgpack or a log line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from plait.runtime.errors import InvalidRequestError, RequestTooLargeError
from plait.runtime.valid_text import is_valid_unicode


def check_declared_size(content_length: str | None, max_bytes: int) -> None:
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise InvalidRequestError("content-length", "must be an integer") from None
    if size > max_bytes:
        raise RequestTooLargeError("body", f"{size} bytes exceed the limit of {max_bytes} bytes")


async def read_limited(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLargeError("body", f"more than the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; InvalidRequestError naming the field for anything else.
    CPU-bound (a few ms per MB): callers run it off the event loop."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequestError("body", f"malformed JSON: {e}") from None
    except RecursionError:  # the C scanner refuses to nest past the interpreter's limit
        raise InvalidRequestError("body", f"nested deeper than {max_depth} levels") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    _check_tree(body, max_depth)
    return body


def _reject_constant(name: str) -> Any:
    raise InvalidRequestError("body", f"{name} is not a JSON number")


def _check_tree(body: dict[str, Any], max_depth: int) -> None:
    """Depth and Unicode of every value and key, iteratively; a path is spelled only for the
    error (``messages[0].content``)."""
    stack: list[tuple[Any, Any, Any, int]] = [(None, None, body, 1)]
    while stack:
        parent, key, value, depth = stack.pop()
        if isinstance(value, str):
            if not is_valid_unicode(value):
                raise InvalidRequestError(
                    _path(parent, key), "is not valid Unicode (a lone UTF-16 surrogate)"
                )
        elif isinstance(value, (dict, list)):
            if depth > max_depth:
                top = _path(parent, key).split("[")[0].split(".")[0] or "body"
                raise InvalidRequestError(top, f"nested deeper than {max_depth} levels")
            here = (parent, key)
            if isinstance(value, dict):
                for k, v in value.items():
                    if not is_valid_unicode(k):
                        raise InvalidRequestError(_path(*here) or "body", "has a key that is not "
                                                  "valid Unicode")  # fmt: skip
                    stack.append((here, k, v, depth + 1))
            else:
                stack.extend((here, i, v, depth + 1) for i, v in enumerate(value)
                             if isinstance(v, (str, dict, list)))  # fmt: skip


def _path(parent: Any, key: Any) -> str:
    parts: list[str] = []
    while key is not None:
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        parent, key = parent
    return "".join(reversed(parts)).lstrip(".")
