"""The admin routes under tenant isolation (two API keys, ``--cache-isolation`` tenant by
default): ``/flush_cache`` drops only the caller's cached prefixes, and ``/metrics`` shows a
caller only its own tenant's hits, latencies and token counts, so neither lets one tenant
observe or disturb another's cache."""

from __future__ import annotations

import random

import httpx
import pytest

PROMPT = 96  # tokens


@pytest.fixture(scope="module")
def tenants(audit_server):
    url, _log, keys, vocab = audit_server
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client, keys, vocab


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _cached(client: httpx.Client, key: str, ids: list[int]) -> int:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
    r = client.post("/generate", json=body, headers=_auth(key))
    assert r.status_code == 200, r.text
    return r.json()["meta_info"]["cached_tokens"]


def _fresh(vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(PROMPT)]


def _series(client: httpx.Client, key: str) -> dict[str, str]:
    r = client.get("/metrics", headers=_auth(key))
    assert r.status_code == 200, r.text
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def test_a_tenant_flushes_only_its_own_cache(tenants):
    client, keys, vocab = tenants
    victim, attacker = keys["victim"], keys["attacker"]
    ids = _fresh(vocab, 101)
    assert _cached(client, victim, ids) == 0
    assert _cached(client, victim, ids) >= PROMPT - 1

    assert client.post("/flush_cache", headers=_auth(attacker)).status_code == 200
    assert _cached(client, victim, ids) >= PROMPT - 1, "another tenant wiped the victim's cache"

    mine = _fresh(vocab, 102)
    _cached(client, attacker, mine)
    assert client.post("/flush_cache", headers=_auth(victim)).status_code == 200
    assert _cached(client, victim, ids) == 0, "the victim's own flush kept its prefixes"
    assert _cached(client, attacker, mine) >= PROMPT - 1


# what a cache hit moves: hit rate, cached tokens, request counts, first-token latencies
HIT_SERIES = (
    "plait:cache_hit_rate",
    "plait:prompt_tokens_cached_total",
    "plait:prompt_tokens_total",
    "plait:requests_total",
    "plait:time_to_first_token_seconds_count",
)


def test_metrics_show_a_tenant_only_its_own_hits(tenants):
    client, keys, vocab = tenants
    victim, attacker = keys["victim"], keys["attacker"]
    seen_by_attacker = _series(client, attacker)
    seen_by_victim = _series(client, victim)
    ids = _fresh(vocab, 103)
    _cached(client, victim, ids)
    assert _cached(client, victim, ids) >= PROMPT - 1  # the victim's hit

    after = _series(client, attacker)
    for name in HIT_SERIES:
        assert after[name] == seen_by_attacker[name], f"{name} shows the victim's requests"
    assert not any('tenant="victim"' in name for name in after), "victim's series shown"

    own = _series(client, victim)
    cached_before = float(seen_by_victim["plait:prompt_tokens_cached_total"])
    assert float(own["plait:prompt_tokens_cached_total"]) >= cached_before + PROMPT - 1
    assert float(own["plait:requests_total"]) == float(seen_by_victim["plait:requests_total"]) + 2
    assert float(own["plait:cache_hit_rate"]) > 0
