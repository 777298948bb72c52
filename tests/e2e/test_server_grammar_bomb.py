"""A grammar bomb against a real server: the bomb's request alone fails (a 400 naming the field)
once the compile time limit kills its compile process, the next constrained request is served,
and the worker's memory with its compile processes is back near where it was before."""

from __future__ import annotations

import re

import httpx

GUARD_S = 300.0  # a hang guard: the compile limit is 5 s (ROBUST_FLAGS), the rest is load
# RSS the worker may gain over the test anyway (allocator growth); the bomb's own is far more
MARGIN = 256 << 20


def _tree_rss(procs, worker: int) -> int:
    return procs.rss(worker) + sum(procs.rss(c) for c in procs.children(worker))


def test_a_grammar_bomb_fails_alone_and_frees_its_compile_memory(
    robust_server, procs, grammar_bomb
):
    url = robust_server.url
    (worker,) = procs.children(robust_server.proc.pid)
    compilers = grammar_bomb.warm(url, worker)
    baseline = _tree_rss(procs, worker)

    params = {"json_schema": grammar_bomb.schema, "max_new_tokens": 2}
    r = httpx.post(f"{url}/generate", json={"text": "Go", "sampling_params": params},
                   timeout=GUARD_S)  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "json_schema"
    assert re.search("did not finish within|memory cap", err["message"]), err

    killed = [pid for pid in compilers if not procs.alive(pid)]
    assert len(killed) == 1, "the compile process that ran the bomb was not killed"
    params = {"regex": "(yes|no)", "max_new_tokens": 4, "temperature": 1.0}
    r = httpx.post(f"{url}/generate", json={"text": "Go", "sampling_params": params},
                   timeout=GUARD_S)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["text"] in ("yes", "no")
    assert _tree_rss(procs, worker) <= baseline + MARGIN
