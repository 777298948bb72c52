"""Tool calls out of generated text, incrementally: one parser serves the streamed and the
whole response, so a client that assembles the stream gets the non-streamed message exactly.

Text outside calls is content. Whitespace next to a call (before a ``<tool_call>`` marker,
after a call, at the end of an output with calls) is layout, not content, and is dropped; an
output without markers keeps its text unchanged. A block that does not parse as a call stays in the content as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from plait.runtime.server.tool_calls import CALL_BEGIN, CALL_END


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


Event = str | ParsedCall  # a str is a content piece


class ToolCallParser:
    """``feed(delta)`` returns what became certain; ``finish()`` the rest, at the end.

    ``mode``: ``"auto"`` (``<tool_call>`` blocks among free text), ``"required"`` (the whole
    output is a JSON array of calls) or ``"named"`` (the whole output is ``forced``'s
    arguments)."""

    def __init__(self, mode: str, forced: str | None = None) -> None:
        assert mode in ("auto", "required", "named")
        self.mode = mode
        self.forced = forced
        self.calls = 0
        self._buf = ""
        self._in_call = False
        self._after_call = False

    def feed(self, delta: str) -> list[Event]:
        self._buf += delta
        if self.mode != "auto":
            return []  # known only once the JSON is complete
        events: list[Event] = []
        while True:
            if self._after_call:
                stripped = self._buf.lstrip()
                if not stripped:
                    self._buf = ""
                    return events
                self._buf, self._after_call = stripped, False
            if self._in_call:
                end = self._buf.find(CALL_END)
                if end < 0:
                    return events
                event = self._block(self._buf[:end])
                events.append(event)
                self._buf = self._buf[end + len(CALL_END) :]
                self._in_call, self._after_call = False, isinstance(event, ParsedCall)
                continue
            begin = self._buf.find(CALL_BEGIN)
            if begin >= 0:
                if text := self._buf[:begin].rstrip():
                    events.append(text)
                self._buf = self._buf[begin + len(CALL_BEGIN) :]
                self._in_call = True
                continue
            # hold back what may still turn into whitespace before a marker
            held = _marker_prefix_len(self._buf)
            safe = self._buf[: len(self._buf) - held].rstrip()
            if safe:
                events.append(safe)
                self._buf = self._buf[len(safe) :]
            return events

    def finish(self) -> list[Event]:
        buf, self._buf = self._buf, ""
        if self.mode == "required":
            calls = _array_calls(buf)
        elif self.mode == "named":
            args = _object_text(buf)
            calls = None if args is None else [ParsedCall(self.forced or "", args)]
        elif self._in_call:
            self._in_call = False
            return [self._block(buf, closed=False)]
        else:
            if self.calls and not buf.strip():
                return []
            return [buf.rstrip() if self.calls else buf] if buf else []
        if calls is None:
            return [buf] if buf else []
        self.calls += len(calls)
        return list(calls)

    def _block(self, text: str, closed: bool = True) -> Event:
        call = _call(text)
        if call is None:
            return CALL_BEGIN + text + (CALL_END if closed else "")
        self.calls += 1
        return call


def _marker_prefix_len(text: str) -> int:
    for k in range(min(len(CALL_BEGIN) - 1, len(text)), 0, -1):
        if CALL_BEGIN.startswith(text[-k:]):
            return k
    return 0


def _call(text: str) -> ParsedCall | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return _call_of(obj)


def _call_of(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _array_calls(text: str) -> list[ParsedCall] | None:
    try:
        items = json.loads(text)
    except ValueError:
        return None
    if not isinstance(items, list) or not items:
        return None
    calls = [_call_of(item) for item in items]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]


def _object_text(text: str) -> str | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return json.dumps(obj, ensure_ascii=False) if isinstance(obj, dict) else None
