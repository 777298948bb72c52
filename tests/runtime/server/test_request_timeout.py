"""The server's ``request_timeout`` on the app in process, over a backend (the server's own
seam, ``GenerateBackend``) whose requests never produce a chunk: the deadline alone ends them,
whatever the machine's speed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from plait.runtime.client.handle import RequestHandle
from plait.runtime.server.admission import HttpLimits
from plait.runtime.server.app import create_app


class SilentBackend:
    """Accepts every request and never answers; records what it was asked to abort."""

    info: dict[str, Any] = {"kv_total": 4096}

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.submitted: list[str] = []

    def submit(self, input_ids, sampling_params, rid=None, stream=False, scope=None):
        self.submitted.append(rid)
        return RequestHandle(rid, self.abort)

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    def flush_cache(self, timeout: float = 10, tenant: str | None = None) -> bool:
        return True

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_its_timeout_is_a_504_and_is_aborted_on_the_worker(stream):
    backend = SilentBackend()
    app = create_app(backend, None, "silent", 512, 1000, http=HttpLimits(request_timeout=0.2))
    body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 4}, "stream": stream}

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/generate", json=body, timeout=30)

    r = asyncio.run(go())
    assert r.status_code == 504, r.text
    assert "request timeout (0.2 s)" in r.json()["error"]["message"]
    assert backend.aborted == backend.submitted and len(backend.submitted) == 1
    gate = app.state.plait.gate
    assert (gate.sequences, gate.tokens) == (0, 0)  # released with the request
