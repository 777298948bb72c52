"""The HTTP server: SGLang's native ``/generate``, the OpenAI routes, health and metrics.

``python -m plait.runtime.server [--model PATH] [--port 30000] ...`` is ``plait serve``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from plait.runtime.chat_template import chat_template_of
from plait.runtime.errors import InvalidRequestError, OverloadedError, WorkerDiedError
from plait.runtime.limits import ModelLimits
from plait.runtime.server.admission import HttpLimits
from plait.runtime.server.auth import ApiKeys, AuthMiddleware
from plait.runtime.server.error_bodies import exception_body, exception_headers
from plait.runtime.server.http_body import native_calls, request_scope
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
    final_chunks,
    first_chunks,
    key_tenant,
    merged_chunks,
    read_json,
    sse,
    streaming_response,
    submit_calls,
)

# ---- the app -----------------------------------------------------------------------------------


def create_app(
    backend: GenerateBackend,
    tokenizer: Any,
    model_name: str,
    context_len: int,
    vocab_size: int,
    api_key: str | None = None,
    served_names: set[str] | None = None,
    api_keys: ApiKeys | None = None,
    http: HttpLimits | None = None,
) -> FastAPI:
    """The app over ``backend``. With keys (``api_key``: one, tenant ``default``; ``api_keys``:
    named ones) every route but ``/health`` needs one, and requests run as its tenant."""
    if api_key is not None:
        if api_keys is not None:
            raise ValueError("give api_key or api_keys, not both")
        api_keys = ApiKeys.load(api_key)
    state = ServerState(
        backend,
        ModelLimits(vocab_size, context_len, backend.info["kv_total"], tokenizer),
        model_name,
        {model_name} | (served_names or set()),
        http=http or HttpLimits(),
    )
    state.metrics.tenant_names = set(api_keys.tenants) if api_keys is not None else set()
    app = FastAPI(title="plait", docs_url=None, redoc_url=None)
    app.state.plait = state

    async def on_error(_request: Request, e: Exception) -> JSONResponse:
        status, body = exception_body(e)
        return JSONResponse(body, status_code=status, headers=exception_headers(e))

    # Exception (the catch-all) answers 500 without internals; the rest name what went wrong
    for kind in (Exception, InvalidRequestError, OverloadedError, WorkerDiedError, TimeoutError):
        app.add_exception_handler(kind, on_error)

    app.add_middleware(AuthMiddleware, keys=api_keys)

    def isolated_tenant(request: Request) -> str | None:
        """The caller's tenant (its API key's name) when the prefix cache is isolated by
        tenant, else None: the admin routes then act on, and show, everything."""
        if backend.info.get("cache_isolation") != "tenant":
            return None
        return key_tenant(request)

    @app.get("/health")
    async def health() -> Response:
        """200 while the worker answers; 503 ``{"status": "restarting"}`` while a supervised
        worker is being replaced, 503 with the error otherwise."""
        if getattr(backend, "status", "ready") == "restarting":
            body = {"status": "restarting", "restarts": backend.restarts}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
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
    async def flush_cache(request: Request) -> Response:
        """Global isolation: every cached prefix, as SGLang (400 while requests run). Tenant
        isolation: the caller's own prefixes only, always (another tenant's cache, and whether
        it is running, stays invisible)."""
        ok = await asyncio.to_thread(backend.flush_cache, 10, isolated_tenant(request))
        if ok:
            return Response("Cache flushed.\n", status_code=200)
        return Response("Cache not flushed: requests are running.\n", status_code=400)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Under tenant isolation the caller sees its own tenant's series (``ServerMetrics``)."""
        try:
            state.metrics.update_from_stats(await asyncio.to_thread(backend.stats, 5))
        except Exception:
            pass  # a dead worker still gets its last counters scraped
        state.metrics.update_server(backend, state.gate)
        return Response(
            state.metrics.render(isolated_tenant(request)), media_type="text/plain; version=0.0.4"
        )

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        body = await read_json(request)
        single, calls = await asyncio.to_thread(native_calls, body, state.limits)  # tokenizes
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("stream", "must be a boolean")
        streams = submit_calls(
            state, calls, request_scope(body, key_tenant(request)), stream=stream
        )
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
                out = shapers[i].event(chunk, behind=streams[i].behind())
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
