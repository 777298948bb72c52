"""The scheduling fields over HTTP (a real server process on the tiny model): ``priority`` and
``tenant`` on native /generate and as extension fields of the OpenAI routes, checked at the
boundary, and the per-class queue-time series in /metrics."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def url(tiny_server):
    return tiny_server


def test_priority_and_tenant_reach_the_worker_and_label_the_queue_time(url):
    body = {"text": "hello", "sampling_params": {"max_new_tokens": 2}, "priority": 3}
    r = httpx.post(f"{url}/generate", json={**body, "tenant": "team-a"}, timeout=60)
    assert r.status_code == 200, r.text
    oai = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    done = oai.completions.create(
        model=oai.models.list().data[0].id,
        prompt="hello",
        max_tokens=2,
        extra_body={"priority": 7, "tenant": "team-b"},
    )
    assert done.usage.completion_tokens == 2
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'plait:queue_time_seconds_count{policy="lpm",priority="3",tenant="team-a"} 1.0' in text
    assert 'priority="7",tenant="team-b"' in text


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/generate", {"text": "hi", "priority": "high"}, "priority"),
        ("/generate", {"text": "hi", "priority": 2**40}, "priority"),
        ("/generate", {"text": "hi", "tenant": 5}, "tenant"),
        ("/v1/completions", {"prompt": "hi", "priority": 1.5}, "priority"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "tenant": ""},
            "tenant",
        ),
    ],
)
def test_a_bad_scheduling_field_is_a_400_naming_it(url, path, body, param):
    r = httpx.post(f"{url}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
