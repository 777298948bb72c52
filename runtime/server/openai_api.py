"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from plait.runtime.errors import InvalidRequestError
from plait.runtime.server.http_body import (
    GenerateCall,
    apply_response_format,
    chat_logprobs,
    chat_prompt,
    check_model,
    completion_logprobs,
    completion_prompts,
    get,
    openai_params,
)
from plait.runtime.server.streams import (
    SSE_DONE,
    ServerState,
    exception_body,
    final_chunks,
    first_chunks,
    merged_chunks,
    read_json,
    sse,
    streaming_response,
    submit_calls,
)

_UNSUPPORTED = ("suffix", "logit_bias", "tools", "functions")


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "plait"}
        card["max_model_len"] = state.limits.context_len
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json(request)
        calls, fmt = await asyncio.to_thread(_completion_calls, body, state)  # tokenizes
        return await _respond(request, body, state, calls, fmt)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_json(request)
        calls, fmt = await asyncio.to_thread(_chat_calls, body, state)  # tokenizes
        return await _respond(request, body, state, calls, fmt)


def _completion_calls(
    body: dict[str, Any], state: ServerState
) -> tuple[list[GenerateCall], _CompletionFormat]:
    check_model(body, state.served_names)
    _reject_unsupported(body)
    echo = get(body, "echo", bool, False)
    top_k = completion_logprobs(body)
    params, n = openai_params(body, state.limits, default_max_tokens=16)
    prompts = completion_prompts(body, state.limits)  # tokenizing last: cheap checks first
    apply_response_format(body, params)
    _ask_logprobs(params, top_k)
    if echo and top_k is not None:
        params.logprob_start_len = 0  # a logprob for every prompt token
    calls = [GenerateCall(ids, params.copy(), n) for ids in prompts]
    echoes = None
    if echo:
        texts = _prompt_texts(body["prompt"], prompts, state)
        echoes = [text for text, call in zip(texts, calls) for _ in range(call.n)]
    return calls, _CompletionFormat(top_k, echoes)


def _chat_calls(body: dict[str, Any], state: ServerState) -> tuple[list[GenerateCall], _ChatFormat]:
    check_model(body, state.served_names)
    _reject_unsupported(body)
    top_k = chat_logprobs(body)
    params, n = openai_params(body, state.limits, default_max_tokens=256)
    ids = chat_prompt(body, state.limits)  # tokenizing last: cheap checks first
    apply_response_format(body, params)
    _ask_logprobs(params, top_k)
    return [GenerateCall(ids, params, n)], _ChatFormat(top_k)


def _prompt_texts(prompt: Any, ids: list[list[int]], state: ServerState) -> list[str]:
    """The prompts as text, for ``echo``: as given, or decoded from token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if state.limits.tokenizer is None:
        raise InvalidRequestError("echo", "the model has no tokenizer to decode the prompt")
    return [state.limits.tokenizer.decode(p) for p in ids]


def _reject_unsupported(body: dict[str, Any]) -> None:
    for name in _UNSUPPORTED:
        value = body.get(name)
        if value and not (name == "response_format" and value == {"type": "text"}):
            raise InvalidRequestError(name, f"{name} is not supported by this server")


def _ask_logprobs(params: Any, top_k: int | None) -> None:
    if top_k is not None:
        params.return_logprob = True
        params.top_logprobs_num = top_k


def _finish_reason(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    if not reason:
        return None
    return {"stop": "stop", "length": "length"}.get(reason.get("type"), reason.get("type"))


def _usage(calls: list[GenerateCall], finals: list[Any]) -> dict[str, Any]:
    prompt = sum(len(c.input_ids) for c in calls)
    completion = sum(len(f.output_ids) for f in finals if f is not None)
    cached, i = 0, 0
    for c in calls:  # count each prompt once, not once per choice
        if finals[i] is not None:
            cached += finals[i].meta_info.get("cached_tokens", 0) or 0
        i += c.n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def _respond(
    request: Request,
    body: dict[str, Any],
    state: ServerState,
    calls: list[GenerateCall],
    fmt: _CompletionFormat | _ChatFormat,
) -> Response:
    stream = get(body, "stream", bool, False)
    options = get(body, "stream_options", dict, {})
    include_usage = bool(options.get("include_usage")) if stream else False
    rid = f"{fmt.id_prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    model = body.get("model") or state.model_name
    head = {"id": rid, "object": fmt.object, "created": created, "model": model}
    streams = submit_calls(state, calls)
    if not stream:
        finals = await final_chunks(request, streams)
        if finals is None:
            return Response(status_code=499)
        choices = [fmt.choice(i, f) for i, f in enumerate(finals)]
        return JSONResponse({**head, "choices": choices, "usage": _usage(calls, finals)})

    firsts = await first_chunks(streams)
    chunk_head = {**head, "object": fmt.chunk_object}

    async def events() -> AsyncIterator[str]:
        sent_logprobs = [0] * len(streams)
        for i in fmt.opening_choices(len(streams)):
            yield sse({**chunk_head, "choices": [i]})
        async for i, chunk in merged_chunks(streams, firsts):
            if isinstance(chunk, Exception):
                yield sse(exception_body(chunk)[1])
                continue
            choice = fmt.delta_choice(i, chunk, sent_logprobs[i])
            if choice is not None:
                sent_logprobs[i] = len(chunk.meta_info.get("output_token_logprobs") or [])
                yield sse({**chunk_head, "choices": [choice]})
        if include_usage:
            finals = [s.last for s in streams]
            yield sse({**chunk_head, "choices": [], "usage": _usage(calls, finals)})
        yield SSE_DONE

    return streaming_response(events())


def _token_text(triple: Any) -> str:
    return triple[2] if triple[2] is not None else ""


class _CompletionFormat:
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


class _ChatFormat:
    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, top_k: int | None) -> None:
        self.top_k = top_k

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

    def choice(self, index: int, chunk: Any) -> dict[str, Any]:
        meta = chunk.meta_info
        return {
            "index": index,
            "message": {"role": "assistant", "content": chunk.text},
            "logprobs": self.logprobs(meta, 0),
            "finish_reason": _finish_reason(meta),
        }

    def opening_choices(self, count: int) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(count)
        ]

    def delta_choice(self, index: int, chunk: Any, sent: int) -> dict[str, Any] | None:
        if not chunk.delta and not chunk.finished:
            return None
        meta = chunk.meta_info
        return {
            "index": index,
            "delta": {"content": chunk.delta} if chunk.delta else {},
            "logprobs": self.logprobs(meta, sent),
            "finish_reason": _finish_reason(meta) if chunk.finished else None,
        }


def _chat_entry(triple: Any) -> dict[str, Any]:
    text = _token_text(triple)
    return {"token": text, "logprob": triple[0], "bytes": list(text.encode("utf-8"))}
