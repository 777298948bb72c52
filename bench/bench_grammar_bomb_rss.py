"""A grammar bomb against a real ``plait serve`` (default model): the resident memory of the
worker and its grammar compile processes before, at the peak during and after the bomb's
compile, the bomb's answer, and the next constrained request.

    python -m plait.bench.bench_grammar_bomb_rss [--timeout 10] [--memory-mb 2048]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from typing import Any

import httpx

from plait.bench.proc_tree import children, rss
from plait.runtime.server.launch import serve

# 800 patterned properties: minutes of xgrammar compile, 53 KB of JSON
BOMB = json.dumps(
    {
        "type": "object",
        "properties": {
            f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}[0-9]{1,40}$"} for i in range(800)
        },
    }
)


def tree_rss(worker: int) -> int:
    return rss(worker) + sum(rss(c) for c in children(worker))


def generate(url: str, params: dict[str, Any]) -> httpx.Response:
    body = {"text": "Go", "sampling_params": {"max_new_tokens": 4, **params}}
    return httpx.post(f"{url}/generate", json=body, timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", default="10", help="--grammar-compile-timeout")
    ap.add_argument("--memory-mb", default="2048", help="--grammar-compile-memory-mb")
    args = ap.parse_args()
    flags = ["--max-total-tokens", "4096", "--grammar-compile-timeout", args.timeout]
    flags += ["--grammar-compile-memory-mb", args.memory_mb]
    flags += ["--grammar-cache-dir", tempfile.mkdtemp(prefix="plait-bomb-")]
    mib = 1 << 20
    with serve(*flags) as server:
        (worker,) = children(server.proc.pid)
        for _ in range(2):  # both compile processes started
            schema = {"type": "object", "properties": {uuid.uuid4().hex: {"type": "integer"}}}
            assert generate(server.url, {"json_schema": json.dumps(schema)}).status_code == 200
        base = tree_rss(worker)
        print(f"baseline: {base / mib:.0f} MiB (worker + {len(children(worker))} compile)")
        answer: dict[str, Any] = {}

        def bomb() -> None:
            start = time.monotonic()
            r = generate(server.url, {"json_schema": BOMB})
            answer.update(status=r.status_code, text=r.text[:160], s=time.monotonic() - start)

        thread = threading.Thread(target=bomb)
        thread.start()
        peak = 0
        while thread.is_alive():
            peak = max(peak, tree_rss(worker))
            time.sleep(0.1)
        print(f"bomb: {answer['status']} after {answer['s']:.1f} s: {answer['text']}")
        print(f"peak: {peak / mib:.0f} MiB")
        r = generate(server.url, {"regex": "(yes|no)"})
        print(f"next constrained request: {r.status_code} {r.json().get('text')!r}")
        after = tree_rss(worker)
        print(f"after: {after / mib:.0f} MiB (worker + {len(children(worker))} compile)")


if __name__ == "__main__":
    main()
