"""One ``generate`` call's arguments: the rids ``expand_n`` makes are unique across the call's
prompts, and the call's ``RequestScope`` is valid by construction and reaches every sequence."""

from __future__ import annotations

import pytest

from plait.runtime.client.generate_args import parse_generate_args
from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits
from plait.runtime.request_scope import RequestScope

LIMITS = ModelLimits(vocab_size=100, context_len=64, kv_total=1024)


def parse(**kw):
    return parse_generate_args(encode=lambda s: [5] * len(s), limits=LIMITS, **kw)


@pytest.mark.parametrize(
    "rid, params",
    [
        (["x", "x"], {"max_new_tokens": 1}),
        # the first prompt's second sample is "x-1": the second prompt's rid
        (["x", "x-1"], [{"max_new_tokens": 1, "n": 2}, {"max_new_tokens": 1}]),
    ],
)
def test_rids_must_be_unique_after_expanding_n(rid, params):
    with pytest.raises(InvalidRequestError) as e:
        parse(input_ids=[[5, 6], [7, 8]], sampling_params=params, rid=rid)
    assert e.value.field == "rid"


def test_expanded_rids_and_the_scope_reach_every_sequence():
    params = [{"max_new_tokens": 1, "n": 2}, {"max_new_tokens": 1}]
    _, subs = parse(
        input_ids=[[5, 6], [7, 8]], sampling_params=params, rid=["x", "y"], priority=3, tenant="t"
    )
    assert [s.rid for s in subs] == ["x-0", "x-1", "y"]
    assert {s.scope for s in subs} == {RequestScope(priority=3, tenant="t")}


@pytest.mark.parametrize(
    "fields, name",
    [
        ({"priority": "high"}, "priority"),
        ({"priority": 2**40}, "priority"),
        ({"tenant": ""}, "tenant"),
        ({"cache_salt": "x" * 257}, "cache_salt"),
        ({"cache_salt": "\ud800"}, "cache_salt"),
    ],
)
def test_a_request_scope_is_valid_by_construction(fields, name):
    with pytest.raises(InvalidRequestError) as e:
        RequestScope(**fields)
    assert e.value.field == name
