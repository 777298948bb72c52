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
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, *args: str, timeout: float = 240) -> Iterator[str]:
    """Yields the base URL of ``python -m plait.runtime.server ARGS`` once /health answers;
    stops the process afterwards."""
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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
