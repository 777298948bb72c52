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
from plait.runtime.request_scope import RequestScope
from plait.runtime.server.error_bodies import exception_body
from plait.runtime.server.http_body import (
    GenerateCall,
    apply_response_format,
    chat_logprobs,
    chat_prompt,
    check_model,
    completion_logprobs,
    completion_prompts,
    get,
    openai_extensions,
    openai_params,
    request_scope,
)
from plait.runtime.server.openai_fields import check_fields
from plait.runtime.server.openai_formats import ChatFormat, CompletionFormat
from plait.runtime.server.streams import (
    SSE_DONE,
    ServerState,
    final_chunks,
    first_chunks,
    key_tenant,
    merged_chunks,
    read_json,
    sse,
    streaming_response,
    submit_calls,
)
from plait.runtime.server.tool_calls import constrain, tool_request

_MAX_BEST_OF = 128


def add_openai_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "plait"}
        card["max_model_len"] = state.limits.context_len
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_json(request)
        calls, fmt, keep, scope = await asyncio.to_thread(  # tokenizes
            _completion_calls, body, state, key_tenant(request)
        )
        return await _respond(request, body, state, calls, scope, fmt, keep=keep)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_json(request)
        calls, fmt, scope = await asyncio.to_thread(  # tokenizes
            _chat_calls, body, state, key_tenant(request)
        )
        return await _respond(request, body, state, calls, scope, fmt)


def _completion_calls(
    body: dict[str, Any], state: ServerState, caller_tenant: str | None
) -> tuple[list[GenerateCall], CompletionFormat, int, RequestScope]:
    """The calls of a completion request, its format, how many choices to keep per prompt
    (``n`` of ``best_of``) and its scope."""
    check_model(body, state.served_names)
    check_fields(body, chat=False, extensions=openai_extensions())
    _check_suffix(body)
    echo = get(body, "echo", bool, False)
    top_k = completion_logprobs(body)
    params, n = openai_params(body, state.limits, default_max_tokens=16)
    best_of = _best_of(body, n)
    scope = request_scope(body, caller_tenant)
    prompts = completion_prompts(body, state.limits)  # tokenizing last: cheap checks first
    apply_response_format(body, params)
    _ask_logprobs(params, top_k)
    if best_of > n:
        params.return_logprob = True  # to rank the candidates
    if echo and top_k is not None:
        params.logprob_start_len = 0  # a logprob for every prompt token
    calls = [GenerateCall(ids, params.copy(), best_of) for ids in prompts]
    echoes = None
    if echo:
        texts = _prompt_texts(body["prompt"], prompts, state)
        echoes = [text for text, _ in zip(texts, calls) for _ in range(n)]
    return calls, CompletionFormat(top_k, echoes), n, scope


def _chat_calls(
    body: dict[str, Any], state: ServerState, caller_tenant: str | None
) -> tuple[list[GenerateCall], ChatFormat, RequestScope]:
    check_model(body, state.served_names)
    check_fields(body, chat=True, extensions=openai_extensions())
    scope = request_scope(body, caller_tenant)
    top_k = chat_logprobs(body)
    tools = tool_request(body)
    params, n = openai_params(body, state.limits, default_max_tokens=256)
    ids = chat_prompt(body, state.limits, tools)  # tokenizing last: cheap checks first
    apply_response_format(body, params)
    if tools is not None:
        constrain(tools, params)
    _ask_logprobs(params, top_k)
    return [GenerateCall(ids, params, n)], ChatFormat(top_k, tools), scope


def _prompt_texts(prompt: Any, ids: list[list[int]], state: ServerState) -> list[str]:
    """The prompts as text, for ``echo``: as given, or decoded from token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if state.limits.tokenizer is None:
        raise InvalidRequestError("echo", "the model has no tokenizer to decode the prompt")
    return [state.limits.tokenizer.decode(p) for p in ids]


def _check_suffix(body: dict[str, Any]) -> None:
    suffix = body.get("suffix")
    if suffix is not None and suffix != "":
        raise InvalidRequestError(
            "suffix", "this model has no fill-in-the-middle support: suffix must be empty"
        )


def _best_of(body: dict[str, Any], n: int) -> int:
    """Completions' ``best_of``: candidates per prompt (>= n), the ``n`` with the highest mean
    token logprob returned."""
    best_of = get(body, "best_of", int, n)
    if not n <= best_of <= _MAX_BEST_OF:
        raise InvalidRequestError("best_of", f"must be in [n ({n}), {_MAX_BEST_OF}], got {best_of}")
    if best_of > n and get(body, "stream", bool, False):
        raise InvalidRequestError("best_of", "cannot stream: the best are known only at the end")
    return best_of


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Whether to end the stream with a usage chunk (``stream_options.include_usage``)."""
    options = get(body, "stream_options", dict, {})
    for key, value in options.items():
        if key not in ("include_usage", "include_obfuscation"):
            raise InvalidRequestError(f"stream_options.{key}", "unknown stream option")
        if value is not None and not isinstance(value, bool):
            raise InvalidRequestError(f"stream_options.{key}", "must be a boolean")
    if options.get("include_obfuscation"):
        raise InvalidRequestError(
            "stream_options.include_obfuscation", "this server does not pad stream chunks"
        )
    return bool(options.get("include_usage")) and stream


def _mean_logprob(final: Any) -> float:
    toks = final.meta_info.get("output_token_logprobs") or []
    return sum(t[0] for t in toks) / len(toks) if toks else float("-inf")


def _best(finals: list[Any], per_call: int, keep: int) -> list[Any]:
    """Of each call's ``per_call`` candidates, the ``keep`` best, best first."""
    if per_call == keep:
        return finals
    out = []
    for start in range(0, len(finals), per_call):
        group = finals[start : start + per_call]
        out += sorted(group, key=_mean_logprob, reverse=True)[:keep]
    return out


def _ask_logprobs(params: Any, top_k: int | None) -> None:
    if top_k is not None:
        params.return_logprob = True
        params.top_logprobs_num = top_k


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
    scope: RequestScope,
    fmt: CompletionFormat | ChatFormat,
    keep: int | None = None,
) -> Response:
    """``keep``: choices kept per call (``best_of`` ranks ``call.n`` candidates down to it)."""
    stream = get(body, "stream", bool, False)
    include_usage = _stream_options(body, stream)
    rid = f"{fmt.id_prefix}-{uuid.uuid4().hex}"
    created = int(time.time())
    model = body.get("model") or state.model_name
    head = {"id": rid, "object": fmt.object, "created": created, "model": model}
    streams = submit_calls(state, calls, scope, stream=stream)
    if not stream:
        finals = await final_chunks(request, streams)
        if finals is None:
            return Response(status_code=499)
        usage = _usage(calls, finals)
        kept = _best(finals, calls[0].n, keep or calls[0].n)
        choices = [fmt.choice(i, f) for i, f in enumerate(kept)]
        return JSONResponse({**head, "choices": choices, "usage": usage})

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
