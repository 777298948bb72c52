"""A real ``plait`` server process on loopback serving the default model, shared by the e2e
tests of the remote backends (one per session: starting it loads the model)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen


def serve_process(log: Path, *args: str, timeout: float = 240) -> Iterator[ServerProcess]:
    """Yields ``python -m plait.runtime.server ARGS`` (its URL and process) once /health
    answers; stops the process afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "plait.runtime.server", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not come up: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield ServerProcess(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_server(log: Path, *args: str, timeout: float = 240) -> Iterator[str]:
    """Yields the base URL of ``python -m plait.runtime.server ARGS`` once /health answers;
    stops the process afterwards."""
    for server in serve_process(log, *args, timeout=timeout):
        yield server.url


@pytest.fixture(scope="session")
def plait_server(tmp_path_factory) -> Iterator[str]:
    """Base URL of a server on the default model."""
    log = tmp_path_factory.mktemp("plait_server") / "server.log"
    yield from start_server(log, "--max-total-tokens", "16384")


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory, tiny_lm_dir) -> Iterator[str]:
    """Base URL of a server on the tiny random model with a tokenizer (tests/conftest.py)."""
    log = tmp_path_factory.mktemp("tiny_server") / "server.log"
    yield from start_server(log, "--model", str(tiny_lm_dir), "--max-total-tokens", "4096")


@pytest.fixture(scope="session")
def tiny_chat_server(tmp_path_factory, tiny_lm_dir) -> Iterator[str]:
    """Base URL of a server on the tiny random model given SmolLM2's chat template (ChatML,
    no tool support: the default tool prompt) and a 4096-token context, for chat and tool
    requests whose prompts outgrow the tiny model's 512."""
    model = tmp_path_factory.mktemp("tiny_chat") / "model"
    shutil.copytree(tiny_lm_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (model / "config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").write_text(SMOLLM2_CHAT_TEMPLATE)
    log = model.parent / "server.log"
    yield from start_server(
        log, "--model", str(model), "--served-model-name", "tiny", "--max-total-tokens", "16384"
    )


# SmolLM2-135M-Instruct's template, as its GGUF carries it
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# the prompt-cache audit's server (tests/e2e/test_cache_audit.py): two tenants
AUDIT_KEYS = {"victim": "victim-key-3f9a1c", "attacker": "attacker-key-77b2e0"}
AUDIT_VOCAB = 2048


@pytest.fixture(scope="session")
def audit_server(tmp_path_factory) -> Iterator[tuple[str, Path, dict[str, str], int]]:
    """(URL, log file, tenant -> key, vocabulary size) of a server with the tenants
    ``AUDIT_KEYS`` (so ``--cache-isolation`` defaults to tenant), on random weights of a small
    llama (``write_audit_model``)."""
    from plait.bench.cache_audit import write_audit_model

    root = tmp_path_factory.mktemp("audit")
    write_audit_model(root / "model", AUDIT_VOCAB)
    keys = root / "keys.json"
    keys.write_text(json.dumps(AUDIT_KEYS))
    log = root / "server.log"
    args = ["--model", str(root / "model"), "--load-format", "dummy"]
    args += ["--max-total-tokens", "65536", "--api-key-file", str(keys), "--log-level", "info"]
    for url in start_server(log, *args):
        yield url, log, AUDIT_KEYS, AUDIT_VOCAB


# Small limits, so the robustness tests reach each of them with small requests.
ROBUST_FLAGS = (
    "--max-total-tokens", "4096",
    "--context-length", "160",  # bounds every generation, junk lengths included
    "--max-request-bytes", "65536",
    "--max-sequences-per-request", "16",
    "--max-concurrent-sequences", "256",
    "--request-timeout", "60",
)  # fmt: skip


CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def robust_server(tmp_path_factory, tiny_lm_dir) -> Iterator[ServerProcess]:
    """A server process on the tiny model (with a ChatML template, for the chat route) and
    small input limits; the tests of bad input, fuzz, soak and worker restarts share it: each
    leaves it serving."""
    import shutil

    from plait.runtime.tokenizer import load_tokenizer

    model = tmp_path_factory.mktemp("tiny-chat-lm")
    shutil.copytree(tiny_lm_dir, model, dirs_exist_ok=True)
    tokenizer = load_tokenizer(model)
    tokenizer.chat_template = CHATML_JINJA
    tokenizer.save_pretrained(model)
    log = tmp_path_factory.mktemp("robust_server") / "server.log"
    yield from serve_process(log, "--model", str(model), *ROBUST_FLAGS)


def live_children(pid: int) -> list[int]:
    """The pids of ``pid``'s children that have not exited (zombies excluded), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def procs():
    """``procs.children(pid)`` and ``procs.alive(pid)``: process checks by pid."""

    class Procs:
        children = staticmethod(live_children)
        alive = staticmethod(pid_alive)

    return Procs


@pytest.fixture
def spawn_tiny_server(tmp_path, tiny_lm_dir):
    """``spawn_tiny_server(*flags)`` starts a server process of the test's own on the tiny
    model (a test that stops or kills it); whatever is left is stopped at teardown."""
    started = []

    def spawn(*flags: str) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        gen = serve_process(log, "--model", str(tiny_lm_dir), "--max-total-tokens", "2048", *flags)
        started.append(gen)
        return next(gen)

    yield spawn
    for gen in started:
        gen.close()
