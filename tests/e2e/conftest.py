"""A real ``plait`` server process on loopback serving the default model, shared by the e2e
tests of the remote backends (one per session: starting it loads the model)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from plait.runtime.server.launch import ServerProcess, ServerStartError, serve


def serve_process(log: Path, *args: str, timeout: float = 240) -> Iterator[ServerProcess]:
    """Yields ``python -m plait.runtime.server ARGS`` (its URL and process) once /health
    answers; stops the process afterwards."""
    try:
        server = serve(*args, log=log, timeout=timeout)
        with server as started:
            yield started
    except ServerStartError as e:
        pytest.fail(str(e))


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
    "--grammar-compile-timeout", "5",  # a grammar bomb fails in seconds
    "--grammar-compile-memory-mb", "1024",
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


# a grammar bomb by size in 53 KB (under ROBUST_FLAGS' body limit): xgrammar needs minutes
# and gigabytes for these 800 patterned properties;
# llguidance (first in the default `auto` chain) compiles these properties in seconds but
# refuses the uri-template format at once, so the compile reaches xgrammar, for which they
# are a bomb (minutes)
BOMB_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "u": {"type": "string", "format": "uri-template"},
            **{
                f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}[0-9]{1,40}$"}
                for i in range(800)
            },
        },
    }
)
COMPILE_GUARD_S = 120.0  # a hang guard: a compile process start imports its library


@pytest.fixture
def grammar_bomb(procs):
    """``grammar_bomb.schema``; ``grammar_bomb.warm(url, worker)`` compiles two fresh small
    schemas (so the worker's two compile processes run) and returns those processes' pids;
    ``grammar_bomb.in_flight(url, compilers)`` posts the bomb from a thread and returns it once
    one of ``compilers`` burns CPU on it."""

    class GrammarBomb:
        schema = BOMB_SCHEMA

        @staticmethod
        def warm(url: str, worker: int) -> list[int]:
            # the cache's two compile slots, each started by its first use; posted together,
            # so the two processes start side by side (the slots are a FIFO queue: a second
            # compile takes the unstarted slot even if the first one has finished)
            def post(_: int) -> httpx.Response:
                schema = {"type": "object", "properties": {uuid.uuid4().hex: {"type": "integer"}}}
                params = {"json_schema": json.dumps(schema), "max_new_tokens": 2}
                return httpx.post(f"{url}/generate", json={"text": "Go", "sampling_params": params},
                                  timeout=COMPILE_GUARD_S)  # fmt: skip

            with ThreadPoolExecutor(2) as pool:
                for r in pool.map(post, range(2)):
                    assert r.status_code == 200, r.text
            compilers = procs.children(worker)
            assert len(compilers) == 2, compilers
            return compilers

        @staticmethod
        def in_flight(url: str, compilers: list[int]) -> threading.Thread:
            idle = {pid: procs.cpu_ticks(pid) for pid in compilers}
            params = {"json_schema": BOMB_SCHEMA, "max_new_tokens": 2}
            bomb = threading.Thread(
                target=_post_ignoring_errors,
                args=(f"{url}/generate", {"text": "Go", "sampling_params": params}),
                daemon=True,
            )
            bomb.start()
            half_a_second = os.sysconf("SC_CLK_TCK") // 2
            deadline = time.monotonic() + COMPILE_GUARD_S
            while all(procs.cpu_ticks(pid) - idle[pid] < half_a_second for pid in compilers):
                assert time.monotonic() < deadline, "no compile process took up the bomb"
                time.sleep(0.05)
            return bomb

    return GrammarBomb


def _post_ignoring_errors(url: str, body: dict) -> None:
    try:
        httpx.post(url, json=body, timeout=COMPILE_GUARD_S)
    except httpx.HTTPError:
        pass  # the server went away mid-request: the caller stops it
