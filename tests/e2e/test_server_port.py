"""Where ``plait serve`` listens: ``--port 0`` takes a port the kernel picks and names it on the
start-up line (what ``launch.serve`` reads, so servers started side by side never race for a
port), and a taken port fails at once, naming the flag."""

from __future__ import annotations

import socket
import subprocess
import sys
from urllib.parse import urlparse

import httpx


def test_servers_on_port_0_each_serve_their_own_port(spawn_tiny_server):
    a = spawn_tiny_server("--served-model-name", "first")
    b = spawn_tiny_server("--served-model-name", "second")
    ports = {urlparse(s.url).port for s in (a, b)}
    assert len(ports) == 2 and 0 not in ports
    for server, name in ((a, "first"), (b, "second")):
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == [name]


def test_a_taken_port_fails_at_once_naming_the_flag(tiny_lm_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "plait.runtime.server", "--model", str(tiny_lm_dir)]
        r = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"--port {port}" in r.stderr and "in use" in r.stderr, r.stderr[-2000:]
