"""How OpenAI responses present generated text: completion choices (with ``echo`` and
per-token logprobs) and chat choices (with tool calls), whole or as stream deltas."""

from __future__ import annotations

import uuid
from typing import Any

from plait.runtime.server.tool_call_parser import ParsedCall, ToolCallParser
from plait.runtime.server.tool_calls import ToolRequest


def _finish_reason(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    if not reason:
        return None
    return {"stop": "stop", "length": "length"}.get(reason.get("type"), reason.get("type"))


def _token_text(triple: Any) -> str:
    return triple[2] if triple[2] is not None else ""


class CompletionFormat:
    """``echoes[i]``: the prompt text choice ``i`` echoes (None without ``echo``); its prompt
    tokens lead the logprobs, the first with no logprob."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, top_k: int | None, echoes: list[str] | None = None) -> None:
        self.top_k = top_k
        self.echoes = echoes
        self.echoed: set[int] = set()

    def logprobs(
        self, meta: dict[str, Any], start: int, offset: int = 0, prompt: bool = False
    ) -> dict[str, Any] | None:
        if self.top_k is None:
            return None
        toks = (meta.get("output_token_logprobs") or [])[start:]
        tops: list[Any] = (meta.get("output_top_logprobs") or [])[start:]
        tops = [{_token_text(e): e[0] for e in row} for row in tops]
        if prompt:
            in_toks = meta.get("input_token_logprobs") or []
            in_tops = meta.get("input_top_logprobs") or []
            in_tops = [{_token_text(e): e[0] for e in row} for row in in_tops]
            in_tops += [{}] * (len(in_toks) - len(in_tops))
            if in_tops:
                in_tops[0] = None  # the first token has no context
            toks, tops = [*in_toks, *toks], [*in_tops, *tops]
        offsets = []
        for t in toks:
            offsets.append(offset)
            offset += len(_token_text(t))
        return {
            "tokens": [_token_text(t) for t in toks],
            "token_logprobs": [t[0] for t in toks],
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def choice(self, index: int, chunk: Any) -> dict[str, Any]:
        meta = chunk.meta_info
        echo = self.echoes[index] if self.echoes is not None else ""
        return {
            "index": index,
            "text": echo + chunk.text,
            "logprobs": self.logprobs(meta, 0, prompt=self.echoes is not None),
            "finish_reason": _finish_reason(meta),
        }

    def opening_choices(self, count: int) -> list[dict[str, Any]]:
        return []

    def delta_choice(self, index: int, chunk: Any, sent: int) -> dict[str, Any] | None:
        if not chunk.delta and not chunk.finished:
            return None
        meta = chunk.meta_info
        offset = len(chunk.text) - len(chunk.delta)
        echo, first = "", False
        if self.echoes is not None:
            offset += len(self.echoes[index])
            first = index not in self.echoed
            if first:
                self.echoed.add(index)
                echo = self.echoes[index]
        return {
            "index": index,
            "text": echo + chunk.delta,
            "logprobs": self.logprobs(meta, sent, 0 if first else offset, prompt=first),
            "finish_reason": _finish_reason(meta) if chunk.finished else None,
        }


class ChatFormat:
    """Chat choices; with active ``tools`` each choice's text goes through a
    ``ToolCallParser`` (one per choice when streaming, so the assembled stream equals the
    whole message)."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, top_k: int | None, tools: ToolRequest | None = None) -> None:
        self.top_k = top_k
        self.tools = tools if tools is not None and tools.active else None
        self.parsers: dict[int, ToolCallParser] = {}

    def logprobs(self, meta: dict[str, Any], start: int) -> dict[str, Any] | None:
        if self.top_k is None:
            return None
        toks = (meta.get("output_token_logprobs") or [])[start:]
        tops = (meta.get("output_top_logprobs") or [])[start:]
        content = []
        for t, row in zip(toks, tops or [[]] * len(toks)):
            entry = _chat_entry(t)
            entry["top_logprobs"] = [_chat_entry(e) for e in row]
            content.append(entry)
        return {"content": content}

    def _parser(self) -> ToolCallParser:
        assert self.tools is not None
        forced = self.tools.forced
        return ToolCallParser(self.tools.choice, forced.name if forced else None)

    def _finish(self, meta: dict[str, Any], parser: ToolCallParser | None) -> str | None:
        reason = _finish_reason(meta)
        return "tool_calls" if reason == "stop" and parser and parser.calls else reason

    def choice(self, index: int, chunk: Any) -> dict[str, Any]:
        meta = chunk.meta_info
        message: dict[str, Any] = {"role": "assistant", "content": chunk.text}
        parser = None
        if self.tools is not None:
            parser = self._parser()
            events = parser.feed(chunk.text) + parser.finish()
            delta = _tool_delta(events, 0)
            message["content"] = delta.get("content") or None
            if "tool_calls" in delta:
                message["tool_calls"] = [
                    {k: v for k, v in c.items() if k != "index"} for c in delta["tool_calls"]
                ]
        return {
            "index": index,
            "message": message,
            "logprobs": self.logprobs(meta, 0),
            "finish_reason": self._finish(meta, parser),
        }

    def opening_choices(self, count: int) -> list[dict[str, Any]]:
        content = None if self.tools is not None else ""
        return [
            {
                "index": i,
                "delta": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(count)
        ]

    def delta_choice(self, index: int, chunk: Any, sent: int) -> dict[str, Any] | None:
        if not chunk.delta and not chunk.finished:
            return None
        meta = chunk.meta_info
        parser = None
        if self.tools is None:
            delta = {"content": chunk.delta} if chunk.delta else {}
        else:
            parser = self.parsers.setdefault(index, self._parser())
            before = parser.calls
            events = parser.feed(chunk.delta)
            if chunk.finished:
                events += parser.finish()
            delta = _tool_delta(events, before)
            if not delta and not chunk.finished:
                return None
        return {
            "index": index,
            "delta": delta,
            "logprobs": self.logprobs(meta, sent),
            "finish_reason": self._finish(meta, parser) if chunk.finished else None,
        }


def _tool_delta(events: list[str | ParsedCall], first_index: int) -> dict[str, Any]:
    """Parser events as one message delta: the content pieces joined, then the calls (numbered
    from ``first_index``), each whole in one entry."""
    delta: dict[str, Any] = {}
    content = "".join(e for e in events if isinstance(e, str))
    if content:
        delta["content"] = content
    calls = [e for e in events if isinstance(e, ParsedCall)]
    if calls:
        delta["tool_calls"] = [
            {
                "index": first_index + k,
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for k, c in enumerate(calls)
        ]
    return delta


def _chat_entry(triple: Any) -> dict[str, Any]:
    text = _token_text(triple)
    return {"token": text, "logprob": triple[0], "bytes": list(text.encode("utf-8"))}
