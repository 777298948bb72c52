"""Named API keys, tenants and path normalisation, on the app in process over a tiny model."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from plait.runtime.config import ServerArgs
from plait.runtime.engine import Engine
from plait.runtime.server.app import create_app
from plait.runtime.server.auth import ApiKeys, normalize_path, parse_key_file
from plait.runtime.server.engine_thread import EngineThread

KEYS = {"alice": "key-alice-0123", "bob": "key-bob-4567"}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=2048, cache_isolation="tenant")
    backend = EngineThread(engine.core)
    yield create_app(
        backend, None, "tiny", engine.context_len, engine.vocab_size, api_keys=ApiKeys(KEYS)
    )
    backend.close()


def call(app, *requests: tuple[str, str, str | None, dict | None]) -> list[httpx.Response]:
    """Runs (method, path, tenant, json body) requests in order against the app."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = []
            for method, path, tenant, body in requests:
                headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
                url = "http://t" + path  # a full URL: httpx would read "//x" as a host
                out.append(await client.request(method, url, json=body, headers=headers))
            return out

    return asyncio.run(go())


def generate(ids: list[int], **fields) -> dict:
    return {"input_ids": ids, "sampling_params": {"max_new_tokens": 2, "temperature": 0}, **fields}


def cached(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    return r.json()["meta_info"]["cached_tokens"]


def test_key_files_parse_as_json_or_lines_and_errors_never_show_a_key(tmp_path):
    assert parse_key_file(json.dumps(KEYS), "k.json") == KEYS
    lines = "# tenants\n\nalice: key-alice-0123\n  bob :key-bob-4567  \n"
    assert parse_key_file(lines, "k.txt") == KEYS
    for text, match in [
        ("alice key-secret-1", "line 1: expected 'name: key'"),
        ("a: key-secret-1\na: key-secret-2", "tenant 'a' appears twice"),
        ('{"a": 5}', "must map tenant names to key strings"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            parse_key_file(text, "k")
        assert "secret" not in str(e.value)
    with pytest.raises(ValueError, match="'a' and 'b' have the same key") as e:
        ApiKeys({"a": "same-secret", "b": "same-secret"})
    assert "secret" not in str(e.value)
    with pytest.raises(ValueError, match="printable ASCII"):
        ApiKeys({"a": "two words"})
    path = tmp_path / "keys"
    path.write_text(lines)
    keys = ApiKeys.load("key-default-89", str(path))
    assert keys is not None and keys.tenants == ["alice", "bob", "default"]
    assert "key-" not in repr(keys)
    assert keys.tenant_of(b"Bearer key-bob-4567") == "bob"
    assert keys.tenant_of(b"Bearer key-default-89") == "default"
    assert keys.tenant_of(b"Bearer key-bob-456") is None
    assert keys.tenant_of(b"key-bob-4567") is None
    assert ApiKeys.load() is None


def test_server_args_take_a_key_file_and_never_show_a_key():
    args = ServerArgs.from_cli(
        ["--api-key", "sekrit-1", "--api-key-file", "/k", "--cache-isolation", "tenant"]
    )
    assert args.api_key_file == "/k" and args.engine.cache_isolation == "tenant"
    assert "sekrit" not in repr(args)
    with pytest.raises(SystemExit):
        ServerArgs.from_cli(["--cache-isolation", "nobody"])


@pytest.mark.parametrize(
    "path, want",
    [
        ("/health", "/health"),
        ("/health/", "/health"),
        ("//health", "/health"),
        ("/./health", "/health"),
        ("/v1/../health", "/health"),
        ("/v1//models/", "/v1/models"),
        ("/../../metrics", "/metrics"),
        ("", "/"),
    ],
)
def test_normalize_path(path, want):
    assert normalize_path(path) == want


def test_every_spelling_of_a_path_needs_the_same_key(app):
    open_paths = ["/health", "/health/", "//health", "/%68ealth", "/v1/../health"]
    for r in call(app, *[("GET", p, None, None) for p in open_paths]):
        assert r.status_code == 200, r.request.url
    closed = ["/metrics", "/metrics/", "/./metrics", "/%6detrics", "/get_model_info/", "/v1/models"]
    closed += ["/health/../metrics", "/openapi.json", "/nowhere"]
    for r in call(app, *[("GET", p, None, None) for p in closed]):
        assert r.status_code == 401, r.request.url
        assert r.json()["error"]["type"] == "authentication_error"
    for r in call(app, *[("GET", p, "bob", None) for p in closed[:6]]):
        assert r.status_code == 200, r.request.url
    (r,) = call(app, ("POST", "/generate/", None, generate([5, 6])))
    assert r.status_code == 401


def test_prefix_cache_is_shared_within_a_tenant_only(app):
    rng = random.Random(7)
    system = [rng.randrange(3, 320) for _ in range(80)]
    a1, b1, a2, b2 = call(
        app,
        ("POST", "/generate", "alice", generate(system + [5])),
        ("POST", "/generate", "bob", generate(system + [6])),
        ("POST", "/generate", "alice", generate(system + [7])),
        ("POST", "/generate", "bob", generate(system + [8])),
    )
    assert cached(a1) == 0 and cached(b1) == 0, "bob hit alice's prefix"
    assert cached(a2) >= len(system) and cached(b2) >= len(system)
    # the OpenAI routes run as the key's tenant too, and honour cache_salt
    body = {"prompt": system + [9], "max_tokens": 2, "temperature": 0}
    salted = {**body, "cache_salt": "conversation-1"}
    c_bob, c_salt, c_salt2 = call(
        app,
        ("POST", "/v1/completions", "bob", body),
        ("POST", "/v1/completions", "bob", salted),
        ("POST", "/v1/completions", "bob", {**salted, "prompt": system + [10]}),
    )
    usage = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in (c_bob, c_salt)]
    assert usage[0] >= len(system) and usage[1] == 0
    assert c_salt2.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(system)
    (s1,) = call(app, ("POST", "/generate", "alice", generate(system + [11], cache_salt="x")))
    assert cached(s1) == 0


@pytest.mark.parametrize("salt", [5, "", "x" * 300, ["a"]])
def test_a_bad_cache_salt_is_a_400_naming_it(app, salt):
    body = {"prompt": [5, 6], "max_tokens": 1, "cache_salt": salt}
    r1, r2, ok = call(
        app,
        ("POST", "/generate", "alice", generate([5, 6], cache_salt=salt)),
        ("POST", "/v1/completions", "alice", body),
        ("POST", "/generate", "alice", generate([5, 6])),
    )
    for r in (r1, r2):
        assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt", r.text
    assert ok.status_code == 200
