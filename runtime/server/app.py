"""The HTTP server: SGLang's native ``/generate``, the OpenAI routes, health and metrics.

``python -m plait.runtime.server [--model PATH] [--port 30000] ...`` is ``plait serve``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from plait.runtime.chat_template import chat_template_of
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.limits import ModelLimits
from plait.runtime.server.http_body import native_calls
from plait.runtime.server.openai_api import add_openai_routes
from plait.runtime.server.sglang_native import (
    NativeStream,
    add_sglang_routes,
    model_info,
    native_out,
)
from plait.runtime.server.streams import (
    SSE_DONE,
    GenerateBackend,
    ServerState,
    error_body,
    exception_body,
    final_chunks,
    first_chunks,
    merged_chunks,
    read_json,
    sse,
    streaming_response,
    submit_calls,
)


class ApiKeyMiddleware:
    """Every route but /health needs ``Authorization: Bearer KEY`` (401 otherwise)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = error_body("missing or wrong API key", None, 401, "authentication_error")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- the app -----------------------------------------------------------------------------------


def create_app(
    backend: GenerateBackend,
    tokenizer: Any,
    model_name: str,
    context_len: int,
    vocab_size: int,
    api_key: str | None = None,
    served_names: set[str] | None = None,
) -> FastAPI:
    state = ServerState(
        backend,
        ModelLimits(vocab_size, context_len, backend.info["kv_total"], tokenizer),
        model_name,
        {model_name} | (served_names or set()),
    )
    app = FastAPI(title="plait", docs_url=None, redoc_url=None)
    app.state.plait = state

    @app.exception_handler(Exception)
    async def on_error(_request: Request, e: Exception) -> JSONResponse:
        status, body = exception_body(e)
        return JSONResponse(body, status_code=status)

    async def on_known_error(_request: Request, e: Exception) -> JSONResponse:
        status, body = exception_body(e)
        return JSONResponse(body, status_code=status)

    for kind in (InvalidRequestError, WorkerDiedError, TimeoutError):
        app.add_exception_handler(kind, on_known_error)

    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.get("/health")
    async def health() -> Response:
        try:
            await asyncio.to_thread(backend.stats, 5)
        except Exception as e:
            status, body = exception_body(e)
            return JSONResponse(body, status_code=503 if status >= 500 else status)
        return Response(status_code=200)

    chat_template = chat_template_of(tokenizer).to_dict()
    info = model_info(state, backend.info.get("model_path"), context_len, vocab_size, chat_template)

    @app.get("/get_model_info")
    async def get_model_info() -> dict[str, Any]:
        return info

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        ok = await asyncio.to_thread(backend.flush_cache, 10)
        if ok:
            return Response("Cache flushed.\n", status_code=200)
        return Response("Cache not flushed: requests are running.\n", status_code=400)

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            state.metrics.update_from_stats(await asyncio.to_thread(backend.stats, 5))
        except Exception:
            pass  # a dead worker still gets its last counters scraped
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        body = await read_json(request)
        single, calls = native_calls(body, state.limits)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("stream", "must be a boolean")
        streams = submit_calls(state, calls)
        per_stream = [call for call in calls for _ in range(call.n)]  # submit_calls' order
        if not stream:
            finals = await final_chunks(request, streams)
            if finals is None:
                return Response(status_code=499)
            outs = [native_out(c, s.return_text_in_logprobs) for c, s in zip(finals, per_stream)]
            return JSONResponse(outs[0] if single else outs)
        firsts = await first_chunks(streams)
        shapers = [NativeStream(call) for call in per_stream]

        async def events() -> AsyncIterator[str]:
            async for i, chunk in merged_chunks(streams, firsts):
                if isinstance(chunk, Exception):
                    yield sse(exception_body(chunk)[1])
                    continue
                out = shapers[i].event(chunk)
                if out is None:
                    continue
                if not single:
                    out["index"] = i
                yield sse(out)
            yield SSE_DONE

        return streaming_response(events())

    add_sglang_routes(app, state, info)
    add_openai_routes(app, state)
    return app
