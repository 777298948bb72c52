"""A soak of the real server (tiny model): mixed requests from concurrent clients (plain and
streamed generations, OpenAI routes, bad requests, streams the client drops early) for a bounded
time, with one worker SIGKILL halfway. Nothing is lost: every accepted request ends with its
output or a clear error; afterwards the server is idle with its KV accounting intact
(free + evictable == total) and nothing left admitted.

``PLAIT_SOAK_S`` (default 30) sets the duration; the counts are printed (``-s``)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import time

import httpx

SOAK_S = float(os.environ.get("PLAIT_SOAK_S", "30"))
CLIENTS = 8
HANG_GUARD_S = 60.0
BAD = [
    ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 10**30}}),
    ("/generate", {"text": "Hi", "sampling_params": {"skip_special_tokens": "no"}}),
    ("/v1/completions", {"prompt": "Hi", "n": 99}),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "Hi"}]}),
]
# a clear error a good request may meet while the worker restarts or the server is full
CLEAR_ERRORS = {429, 503}


class Tally:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lost: list[str] = []

    def __str__(self) -> str:
        return f"{dict(self.counts)}, lost {len(self.lost)}"


def _sampling(rng: random.Random) -> dict:
    return {"max_new_tokens": rng.randint(1, 24), "ignore_eos": rng.random() < 0.5}


async def _retry_after(r: httpx.Response) -> None:
    """A well-behaved client waits as long as the server asked (Retry-After)."""
    await asyncio.sleep(float(r.headers.get("retry-after", "1")))


async def _plain(c: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally) -> None:
    if rng.random() < 0.5:
        path, body = "/generate", {"text": f"Hi {rng.random()}", "sampling_params": _sampling(rng)}
    else:
        path = "/v1/completions"
        body = {"prompt": f"Say {rng.random()}", "max_tokens": rng.randint(1, 16), "n": 2}
    tally.counts["sent"] += 1
    r = await c.post(f"{url}{path}", json=body)
    if r.status_code == 200:
        tally.counts["completed"] += 1
    elif r.status_code in CLEAR_ERRORS:
        tally.counts["errored (429/503)"] += 1
        await _retry_after(r)
    else:
        tally.lost.append(f"{path}: {r.status_code} {r.text[:200]}")


async def _streamed(c: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally) -> None:
    drop_after = rng.choice([None, None, 1, 3])  # the client walks away after a few events
    body = {"text": f"Go {rng.random()}", "stream": True, "sampling_params": _sampling(rng)}
    tally.counts["sent"] += 1
    async with c.stream("POST", f"{url}/generate", json=body) as r:
        if r.status_code in CLEAR_ERRORS:
            tally.counts["errored (429/503)"] += 1
            await _retry_after(r)
            return
        events, done = 0, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                assert event["error"]["code"] in CLEAR_ERRORS, event
                tally.counts["errored (429/503)"] += 1
                return
            events += 1
            if drop_after is not None and events >= drop_after:
                tally.counts["dropped by the client"] += 1
                return
        if done:
            tally.counts["completed"] += 1
        else:
            tally.lost.append("a stream ended without [DONE] or an error")


async def _bad(c: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally) -> None:
    path, body = rng.choice(BAD)
    r = await c.post(f"{url}{path}", json=body)
    assert r.status_code == 400, r.text
    tally.counts["rejected (400)"] += 1


async def _client(url: str, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=HANG_GUARD_S) as c:
        while time.monotonic() < deadline:
            action = rng.choice([_plain, _plain, _streamed, _streamed, _bad])
            try:
                await action(c, url, rng, tally)
            except httpx.TimeoutException:
                tally.lost.append(f"{action.__name__} hung past {HANG_GUARD_S} s")
                tally.counts["sent"] -= 1  # counted as lost instead


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("plait:"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_mixed_load_with_a_worker_kill_loses_nothing(robust_server, procs):
    url, server = robust_server.url, robust_server.proc
    tally = Tally()

    async def run() -> None:
        deadline = time.monotonic() + SOAK_S
        clients = [asyncio.ensure_future(_client(url, i, deadline, tally)) for i in range(CLIENTS)]
        await asyncio.sleep(SOAK_S / 2)  # a point in the load, not a synchronisation
        for pid in procs.children(server.pid):
            os.kill(pid, signal.SIGKILL)
        tally.counts["worker kills"] += 1
        await asyncio.wait_for(asyncio.gather(*clients), SOAK_S + 4 * HANG_GUARD_S)

    asyncio.run(run())
    print(f"\nsoak {SOAK_S:.0f} s, {CLIENTS} clients: {tally}")
    assert tally.lost == []
    c = tally.counts
    ended = c["completed"] + c["errored (429/503)"] + c["dropped by the client"]
    assert c["sent"] == ended and c["completed"] > 0

    deadline = time.monotonic() + 5 * HANG_GUARD_S  # the restart included
    while True:  # the idle invariant, once the server has settled
        m = _metrics(url)
        idle = m.get("plait:num_running_reqs") == 0 and m.get("plait:num_queued_reqs") == 0
        if idle and m.get("plait:sequences_in_flight") == 0 and m.get("plait:kv_idle_ok") == 1:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.2)
    assert m["plait:prompt_tokens_in_flight"] == 0
