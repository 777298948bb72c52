"""A non-streamed HTTP request is asked of the worker as a stream of two records, its first
token and its end (``RECORDS_FIRST_AND_LAST``): the same answer as streamed, the time to first
token still observed. On the app in process over a tiny model (``EngineThread``)."""

from __future__ import annotations

import asyncio
import json

import httpx

from plait.runtime.client.handle import RequestHandle
from plait.runtime.engine import Engine
from plait.runtime.request_scope import RequestScope
from plait.runtime.server.app import create_app
from plait.runtime.server.engine_thread import EngineThread
from plait.runtime.server.streams import RECORDS_FIRST_AND_LAST


class Recording(EngineThread):
    """The engine thread, noting each submitted request's stream interval and rid."""

    def __init__(self, core) -> None:
        super().__init__(core)
        self.intervals: list[int | None] = []
        self.rids: list[str] = []

    def submit(self, input_ids, sampling_params, rid=None, stream=False, scope=RequestScope()):
        self.intervals.append(sampling_params.stream_interval)
        handle = super().submit(input_ids, sampling_params, rid, stream, scope)
        self.rids.append(handle.rid)
        return handle


def test_a_non_streamed_request_asks_for_its_first_and_last_record_only(
    tiny_model_dir, monkeypatch
):
    records: dict[str, int] = {}  # by rid: what the engine thread delivered to its handle
    push = RequestHandle.push

    def counted(handle: RequestHandle, item) -> None:
        records[handle.rid] = records.get(handle.rid, 0) + 1
        push(handle, item)

    monkeypatch.setattr(RequestHandle, "push", counted)
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=1024)
    backend = Recording(engine.core)
    app = create_app(backend, None, "tiny", engine.context_len, engine.vocab_size)
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}

    async def run() -> tuple[dict, list[dict], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"input_ids": [5, 6, 7], "sampling_params": params}
            whole = (await client.post("/generate", json=body)).json()
            r = await client.post("/generate", json=body | {"stream": True})
            events = [
                json.loads(line[6:])
                for line in r.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            metrics = (await client.get("/metrics")).text
            return whole, events, metrics

    try:
        whole, events, metrics = asyncio.run(run())
    finally:
        backend.close()
    assert backend.intervals == [RECORDS_FIRST_AND_LAST, None]
    # streamed: every token (the worker's interval, 1)
    assert [records[rid] for rid in backend.rids] == [2, 12]
    # an event a record, but for records that found a later one already waiting (the reader
    # fell behind): the later event carries them, as SGLang's server coalesces
    counts = [e["meta_info"]["completion_tokens"] for e in events]
    assert counts == sorted(set(counts)) and counts[-1] == 12 and len(events) <= 12
    assert whole["output_ids"] == events[-1]["output_ids"] and len(whole["output_ids"]) == 12
    assert whole["meta_info"]["completion_tokens"] == 12
    assert "plait:time_to_first_token_seconds_count 2.0" in metrics
    engine.check_idle()
