"""How fast a supervised worker comes back: SIGKILL the worker of a running ``plait serve`` under
a streaming request and time (a) until the stream ends with its error, (b) until /health answers
200 again, (c) until a new request is served; side by side with the server's cold start (the
ratio survives machine load better than the seconds).

    python bench/bench_worker_restart.py [--model PATH] [--kills 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

from plait.bench.proc_tree import children


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, start: float, timeout: float = 600) -> float:
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the server did not become healthy")


def _stream_until_error(url: str, started: threading.Event, ended: list[float]) -> None:
    body = {"text": "Tell me a long story.", "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}  # fmt: skip
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=600) as r:
        for line in r.iter_lines():
            started.set()
            if '"error"' in line:
                ended.append(time.monotonic())
                return


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--kills", type=int, default=3)
    args = p.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "plait.runtime.server", "--port", str(port),
           "--max-total-tokens", "4096"] + (["--model", args.model] if args.model else [])  # fmt: skip
    start = time.monotonic()
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        cold = _wait_healthy(url, start)
        rows = []
        for _ in range(args.kills):
            started, ended = threading.Event(), []
            t = threading.Thread(target=_stream_until_error, args=(url, started, ended))
            t.start()
            started.wait(600)
            (worker,) = children(server.pid)
            killed = time.monotonic()
            os.kill(worker, signal.SIGKILL)
            healthy = _wait_healthy(url, killed)
            body = {"text": "Hi", "sampling_params": {"max_new_tokens": 1}}
            assert httpx.post(f"{url}/generate", json=body, timeout=600).status_code == 200
            served = time.monotonic() - killed
            t.join(600)
            rows.append((ended[0] - killed, healthy, served))
        print(f"model: {args.model or 'default (SmolLM2-135M-Instruct)'}; load {os.getloadavg()}")
        print(f"cold start (process start -> /health 200): {cold:.2f} s")
        print("kill | stream error after | /health 200 after | first request served after")
        for i, (err, ok, served) in enumerate(rows):
            print(f"{i + 1} | {err:.3f} s | {ok:.2f} s | {served:.2f} s")
        med = statistics.median(r[1] for r in rows)
        print(f"median restart {med:.2f} s = {med / cold:.2f} x the cold start")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
