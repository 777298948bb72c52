"""The records that cross the worker socket, and their msgpack encoding (never pickle).

A frame is a msgpack array ``[tag, field, ...]``. ``decode`` is an input boundary: it rejects an
unknown tag, a wrong field count or a field of the wrong type with ``MessageError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack


class MessageError(ValueError):
    """A frame that is not a valid message."""


# ---- client -> worker -----------------------------------------------------------------------


@dataclass(slots=True)
class GenerateReq:
    rid: str
    input_ids: list
    sampling_params: dict
    stream: bool = False


@dataclass(slots=True)
class AbortReq:
    rid: str


@dataclass(slots=True)
class FlushCacheReq:
    pass


@dataclass(slots=True)
class StatsReq:
    pass


@dataclass(slots=True)
class PingReq:
    pass


@dataclass(slots=True)
class ShutdownReq:
    pass


# ---- worker -> client -----------------------------------------------------------------------


@dataclass(slots=True)
class TokenOut:
    """New tokens of one request. ``meta_info`` is ``Engine``'s without token text; its
    ``output_token_logprobs`` / ``output_top_logprobs`` cover ``new_ids`` only (the client
    accumulates), and input logprobs come once, with the first ``TokenOut``."""

    rid: str
    new_ids: list
    finished: bool
    meta_info: dict


@dataclass(slots=True)
class ErrorOut:
    """``kind`` is "invalid_request" (``field`` names the argument) or "internal"."""

    rid: str
    field: str
    message: str
    kind: str


@dataclass(slots=True)
class FlushCacheOut:
    ok: bool


@dataclass(slots=True)
class StatsOut:
    stats: dict


@dataclass(slots=True)
class Pong:
    """``info``: vocab_size, context_len, kv_total, has_tokenizer (for validation up front)."""

    info: dict = field(default_factory=dict)


_TYPES: list[tuple[type, tuple[type, ...]]] = [
    (GenerateReq, (str, list, dict, bool)),
    (AbortReq, (str,)),
    (FlushCacheReq, ()),
    (StatsReq, ()),
    (PingReq, ()),
    (ShutdownReq, ()),
    (TokenOut, (str, list, bool, dict)),
    (ErrorOut, (str, str, str, str)),
    (FlushCacheOut, (bool,)),
    (StatsOut, (dict,)),
    (Pong, (dict,)),
]
_BY_TAG = {cls.__name__: (cls, types) for cls, types in _TYPES}

Message = Any


def encode(msg: Message) -> bytes:
    name = type(msg).__name__
    if name not in _BY_TAG:
        raise MessageError(f"not a message type: {name}")
    return msgpack.packb([name, *(getattr(msg, f.name) for f in fields(msg))], use_bin_type=True)


def decode(data: bytes) -> Message:
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:
        raise MessageError(f"undecodable frame ({len(data)} bytes): {e}") from None
    if not isinstance(frame, list) or not frame or not isinstance(frame[0], str):
        raise MessageError("a frame must be a msgpack array [tag, fields...]")
    tag, values = frame[0], frame[1:]
    if tag not in _BY_TAG:
        raise MessageError(f"unknown message tag {tag!r}")
    cls, types = _BY_TAG[tag]
    if len(values) != len(types):
        raise MessageError(f"{tag} takes {len(types)} fields, got {len(values)}")
    for i, (value, want) in enumerate(zip(values, types)):
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok:
            name = fields(cls)[i].name
            raise MessageError(f"{tag}.{name} must be {want.__name__}, got {type(value).__name__}")
    return cls(*values)
