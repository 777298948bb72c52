"""Prefix-cache isolation in the worker: a request reuses only what its own tenant / cache salt
cached, on a tiny random model."""

from __future__ import annotations

import random

import pytest

from plait.runtime.config import EngineConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore

GREEDY = {"max_new_tokens": 3, "temperature": 0}


def make_core(model_dir, **options) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(model_dir, max_total_tokens=2048, **options))


def run(core: EngineCore, *reqs: tuple[str, list[int], str | None, str | None]) -> dict:
    """Submits (rid, ids, tenant, cache_salt) requests together and steps until all finish;
    returns rid -> (output ids, cached tokens)."""
    for rid, ids, tenant, salt in reqs:
        params = SamplingParams.from_dict(GREEDY)
        core.add_request(rid, ids, params, scope=RequestScope(tenant=tenant, cache_salt=salt))
    out: dict[str, tuple[list[int], int]] = {}
    while core.has_work:
        for o in core.step():
            ids, cached = out.get(o.rid, ([], 0))
            out[o.rid] = (ids[: o.start] + o.new_ids, max(cached, o.cached_tokens))
    core.check_idle()
    return out


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 320) for _ in range(n)]


def test_tenants_reuse_only_their_own_prefixes(tiny_model_dir):
    core = make_core(tiny_model_dir("llama"), cache_isolation="tenant")
    system = prompt(0, 60)
    first = run(core, ("a1", system + [7], "a", None))
    assert first["a1"][1] == 0
    later = run(core, ("b1", system + [8], "b", None))
    assert later["b1"][1] == 0, "tenant b reused tenant a's prefix"
    mine = run(core, ("a2", system + [9], "a", None), ("b2", system + [10], "b", None))
    assert mine["a2"][1] >= len(system) and mine["b2"][1] >= len(system)
    # a cache salt is a namespace of its own, even within a tenant
    salted = run(core, ("a3", system + [11], "a", "s1"))
    assert salted["a3"][1] == 0
    # isolation changes what is reused, never what is computed
    again = run(core, ("a4", system + [8], "a", None), ("c1", system + [8], "c", "s2"))
    assert again["a4"][0] == again["c1"][0] == later["b1"][0]


def test_global_isolation_shares_across_tenants_but_not_salts(tiny_model_dir):
    core = make_core(tiny_model_dir("llama"), cache_isolation="global")
    system = prompt(1, 60)
    run(core, ("a1", system + [7], "a", None))
    out = run(core, ("b1", system + [8], "b", None), ("s1", system + [9], "b", "salt"))
    assert out["b1"][1] >= len(system)
    assert out["s1"][1] == 0


@pytest.mark.parametrize("policy", ["lpm", "dfs-weight", "fcfs"])
def test_every_policy_serves_mixed_tenants_and_evicts_their_namespaces(tiny_model_dir, policy):
    # a pool of 600 tokens: the namespaces' entries must be evicted for later requests to fit
    core = EngineCore(
        EngineConfig.from_kwargs(
            tiny_model_dir("llama"),
            max_total_tokens=600,
            cache_isolation="tenant",
            schedule_policy=policy,
        )
    )
    system = prompt(2, 40)
    reqs = [
        (f"r{i}", system + prompt(100 + i, 20), f"t{i % 4}", None if i % 3 else f"s{i}")
        for i in range(24)
    ]
    out = run(core, *reqs)
    assert sorted(out) == sorted(r[0] for r in reqs)
    assert all(len(ids) == GREEDY["max_new_tokens"] for ids, _ in out.values())
    assert sum(cached for _, cached in out.values()) > 0  # shared within each tenant
    core.cache.tree.evict(core.cache.total_size())
    assert core.cache.tree.num_namespaces() == 0
    core.check_idle()


@pytest.mark.parametrize(
    "tenant, salt, field",
    [(5, None, "tenant"), (None, "", "cache_salt"), (None, "x" * 257, "cache_salt")],
)
def test_a_bad_tenant_or_salt_is_rejected_by_name(tiny_model_dir, tenant, salt, field):
    core = make_core(tiny_model_dir("llama"))
    params = SamplingParams.from_dict(GREEDY)
    with pytest.raises(InvalidRequestError) as e:
        core.add_request("r", [5, 6], params, scope=RequestScope(tenant=tenant, cache_salt=salt))
    assert e.value.field == field
    with pytest.raises(InvalidRequestError, match="lone surrogate"):
        core.add_request("r", [5, 6], params, scope=RequestScope(cache_salt="\ud800"))
    assert run(core, ("ok", [5, 6], None, "fine"))["ok"][0]


def test_a_tenant_flush_drops_only_that_tenants_prefixes_even_while_another_runs(
    tiny_model_dir,
):
    core = make_core(tiny_model_dir("llama"), cache_isolation="tenant")
    system = prompt(3, 60)
    run(core, ("a1", system + [7], "a", None), ("a2", system + [7], "a", "salt"))
    run(core, ("b1", system + [7], "b", None))
    # b has a request running: a's flush must neither wait for it nor touch b's prefixes
    core.add_request(
        "b-running", prompt(4, 20), SamplingParams.from_dict(GREEDY), scope=RequestScope(tenant="b")
    )
    core.step()
    assert core.flush_cache("a") is True
    assert core.flush_cache() is False  # a global flush still waits for idle
    while core.has_work:
        core.step()
    out = run(
        core,
        ("a3", system + [8], "a", None),
        ("a4", system + [8], "a", "salt"),
        ("b2", system + [8], "b", None),
    )
    assert out["a3"][1] == 0 and out["a4"][1] == 0, "a's prefixes survived its flush"
    assert out["b2"][1] >= len(system), "a's flush dropped b's prefixes"
    assert core.flush_cache() is True
    assert run(core, ("b3", system + [9], "b", None))["b3"][1] == 0
