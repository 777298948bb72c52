"""Stopping ``plait serve``: SIGTERM / SIGINT end the server and its worker within seconds
whatever is running (a long stream, a request whose body never arrives, a grammar compile), and
a server killed outright takes its worker and the worker's compile processes with it (the
kernel's parent-death signal). Checked by pid."""

from __future__ import annotations

import signal
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

GUARD_S = 30.0  # a hang guard, never a speed assertion


def _gone(procs, pid: int) -> bool:
    deadline = time.monotonic() + GUARD_S
    while procs.alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _long_stream(url: str, started: threading.Event) -> None:
    body = {"text": "Go", "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}  # fmt: skip
    try:
        with httpx.stream("POST", f"{url}/generate", json=body, timeout=GUARD_S) as r:
            for _ in r.iter_lines():
                started.set()
    except httpx.HTTPError:
        pass  # the server went away mid-stream: expected
    finally:
        started.set()


def _hung_request(url: str) -> socket.socket:
    """Headers promising a body that never comes: the request hangs in the server."""
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=GUARD_S)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"text\": ")  # fmt: skip
    return s


def _all_gone(procs, worker: int, compilers: list[int]) -> None:
    assert _gone(procs, worker), "the worker outlived the server"
    for pid in compilers:
        assert _gone(procs, pid), "a grammar compile process outlived the server"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_and_its_worker_mid_work(
    spawn_tiny_server, procs, grammar_bomb, tmp_path, sig
):
    server = spawn_tiny_server(
        "--shutdown-timeout", "2", "--grammar-cache-dir", str(tmp_path / "grammars")
    )
    (worker,) = procs.children(server.proc.pid)
    compilers = grammar_bomb.warm(server.url, worker)
    bomb = grammar_bomb.in_flight(server.url, compilers)
    started = threading.Event()
    stream = threading.Thread(target=_long_stream, args=(server.url, started), daemon=True)
    stream.start()
    assert started.wait(GUARD_S)
    hung = _hung_request(server.url)
    try:
        server.proc.send_signal(sig)
        server.proc.wait(GUARD_S)
        _all_gone(procs, worker, compilers)
    finally:
        hung.close()
    stream.join(GUARD_S)
    bomb.join(GUARD_S)


def test_a_killed_server_takes_its_worker_and_compiles_with_it(
    spawn_tiny_server, procs, grammar_bomb, tmp_path
):
    server = spawn_tiny_server("--grammar-cache-dir", str(tmp_path / "grammars"))
    (worker,) = procs.children(server.proc.pid)
    compilers = grammar_bomb.warm(server.url, worker)
    bomb = grammar_bomb.in_flight(server.url, compilers)
    server.proc.kill()
    server.proc.wait(GUARD_S)
    _all_gone(procs, worker, compilers)
    bomb.join(GUARD_S)
