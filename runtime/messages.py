"""The records that cross the worker socket, and their msgpack encoding (never pickle).

A frame is a msgpack array ``[tag, field, ...]``. ``decode`` is an input boundary: it rejects an
unknown tag, a wrong field count or a field of the wrong type with ``MessageError``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import msgpack


class MessageError(ValueError):
    """A frame that is not a valid message."""


# ---- client -> worker -----------------------------------------------------------------------


@dataclass(slots=True)
class GenerateReq:
    """``priority``: larger is more urgent (SGLang's default direction; the worker's
    ``schedule_low_priority_values_first`` flips it); None is the default class. ``tenant``:
    who sent it, for fair sharing between tenants; None is the anonymous tenant."""

    rid: str
    input_ids: list
    sampling_params: dict
    stream: bool = False
    priority: int | None = None
    # the caller's tenant (the server's name for its API key) and vLLM-style cache salt; the
    # radix cache shares prefixes only within one (tenant, cache_salt)
    tenant: str | None = None
    cache_salt: str | None = None


@dataclass(slots=True)
class AbortReq:
    rid: str


@dataclass(slots=True)
class FlushCacheReq:
    """``tenant`` None: every cached prefix (only when idle); else that tenant's only."""

    tenant: str | None = None


@dataclass(slots=True)
class StatsReq:
    pass


@dataclass(slots=True)
class PingReq:
    pass


@dataclass(slots=True)
class ShutdownReq:
    pass


@dataclass(slots=True)
class StartWorker:
    """The worker's configuration (``EngineConfig.to_dict``), sent on its stdin at start."""

    config: dict


# ---- worker -> client -----------------------------------------------------------------------


@dataclass(slots=True)
class ReqOutput:
    """What one request produced in one scheduler step: the one output record every consumer
    reads (worker socket, in-process engine, in-process server backend).

    After this record the request's output ids are ``ids[:start] + new_ids`` (``start`` is the
    number of ids sent before, or less after a jump-forward re-tokenized the tail).
    ``new_logprobs`` / ``new_logprob_ids`` / ``new_top_logprobs`` are the output logprobs added
    since the last record (None unless the request asked for logprobs); ``input_*`` come once,
    on the first record. ``finish_reason`` (``FinishReason.to_dict``) is set on the last record;
    ``error`` = ``[field, message, kind]`` when the request failed alone (then it is the last).
    A record's size is proportional to its new tokens, never to the output so far.
    """

    rid: str
    start: int
    new_ids: list
    finish_reason: dict | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    new_logprobs: list | None = None
    new_logprob_ids: list | None = None
    new_top_logprobs: list | None = None
    input_logprobs: list | None = None
    input_logprob_ids: list | None = None
    input_top_logprobs: list | None = None
    error: list | None = None


_OPT_LIST = (list, type(None))
_REQ_OUTPUT_TYPES: tuple[tuple[type, ...], ...] = (
    (str,),
    (int,),
    (list,),
    (dict, type(None)),
    (int,),
    (int,),
    *([_OPT_LIST] * 7),
)


@dataclass(slots=True)
class BatchOut:
    """Every record of one scheduler step for one client: one frame per client per step."""

    outputs: list  # of ReqOutput


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


_INT_OR_NONE = (int, type(None))
_STR_OR_NONE = (str, type(None))
# per message: each field's type (or tuple of types)
_TYPES: list[tuple[type, tuple[type | tuple[type, ...], ...]]] = [
    (GenerateReq, (str, list, dict, bool, _INT_OR_NONE, _STR_OR_NONE, _STR_OR_NONE)),
    (AbortReq, (str,)),
    (FlushCacheReq, (_STR_OR_NONE,)),
    (StatsReq, ()),
    (PingReq, ()),
    (ShutdownReq, ()),
    (StartWorker, (dict,)),
    (BatchOut, (list,)),
    (ErrorOut, (str, str, str, str)),
    (FlushCacheOut, (bool,)),
    (StatsOut, (dict,)),
    (Pong, (dict,)),
]
_BY_TAG = {cls.__name__: (cls, types) for cls, types in _TYPES}

Message = Any


_REQ_OUTPUT_FIELDS = [f.name for f in fields(ReqOutput)]


def encode(msg: Message) -> bytes:
    name = type(msg).__name__
    if name not in _BY_TAG:
        raise MessageError(f"not a message type: {name}")
    if isinstance(msg, BatchOut):
        rows = [[getattr(o, f) for f in _REQ_OUTPUT_FIELDS] for o in msg.outputs]
        return msgpack.packb([name, rows], use_bin_type=True)
    return msgpack.packb([name, *(getattr(msg, f.name) for f in fields(msg))], use_bin_type=True)


def _decode_outputs(rows: list) -> list[ReqOutput]:
    outputs = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(_REQ_OUTPUT_TYPES):
            raise MessageError(f"a ReqOutput takes {len(_REQ_OUTPUT_TYPES)} fields")
        for name, value, want in zip(_REQ_OUTPUT_FIELDS, row, _REQ_OUTPUT_TYPES):
            if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
                raise MessageError(f"ReqOutput.{name} has type {type(value).__name__}")
        outputs.append(ReqOutput(*row))
    return outputs


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
    # trailing fields with defaults may be left out (a sender from before they existed)
    required = sum(1 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    if not required <= len(values) <= len(types):
        raise MessageError(f"{tag} takes {len(types)} fields, got {len(values)}")
    for i, (value, want) in enumerate(zip(values, types)):
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok:
            name = fields(cls)[i].name
            kinds = want if isinstance(want, tuple) else (want,)
            need = " or ".join(k.__name__ for k in kinds)
            raise MessageError(f"{tag}.{name} must be {need}, got {type(value).__name__}")
    if cls is BatchOut:
        return BatchOut(_decode_outputs(values[0]))
    return cls(*values)
