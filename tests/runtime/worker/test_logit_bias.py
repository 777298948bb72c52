"""``logit_bias``: validated at the boundary, added to the logits batched, per row."""

from __future__ import annotations

import pytest
import torch

from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.sampler import Sampler, apply_logit_processors
from plait.runtime.worker.sampling_info import SamplingBatchInfo


def build(params: list[SamplingParams], vocab: int) -> SamplingBatchInfo:
    for p in params:
        p.verify(vocab)
    return SamplingBatchInfo.build(
        params,
        [[] for _ in params],
        [[1] for _ in params],
        eos_token_ids=[0],
        vocab_size=vocab,
        device="cpu",
    )


def test_bias_is_added_to_its_row_only() -> None:
    logits = torch.zeros(3, 8)
    params = [
        SamplingParams(temperature=0, logit_bias={"5": 7.5, "2": -3}),
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, logit_bias={3: 1.0}),  # int keys from Python callers
    ]
    out = apply_logit_processors(logits, build(params, 8))
    expected = torch.zeros(3, 8)
    expected[0, 5], expected[0, 2], expected[2, 3] = 7.5, -3.0, 1.0
    assert torch.equal(out, expected)
    assert torch.equal(logits, torch.zeros(3, 8))  # the caller's logits stay untouched


def test_bias_steers_greedy_and_sampled_rows() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    ban_top = int(logits.argmax())
    greedy = SamplingParams(temperature=0, logit_bias={str(ban_top): -100, "7": 100})
    assert Sampler()(logits, build([greedy], 50), False).next_token_ids.tolist() == [7]
    sampled = [SamplingParams(seed=s, logit_bias={str(ban_top): -100}) for s in range(200)]
    draws = Sampler()(logits.expand(200, -1), build(sampled, 50), False).next_token_ids
    assert ban_top not in draws.tolist()


@pytest.mark.parametrize(
    "bias,needle",
    [
        ({"50": 1.0}, "[0, 49]"),
        ({"-1": 1.0}, "token ids"),
        ({"x": 1.0}, "token ids"),
        ({"3": 101}, "[-100.0, 100.0]"),
        ({"3": float("nan")}, "number"),
        ([1, 2], "object"),
    ],
)
def test_bad_bias_names_the_field_and_the_limit(bias, needle) -> None:
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(logit_bias=bias).verify(50)
    assert e.value.field == "logit_bias" and needle in e.value.message


def test_bias_survives_copy_and_dict_round_trip() -> None:
    p = SamplingParams.from_dict({"logit_bias": {4: 2.0}})
    assert p.logit_bias == {"4": 2.0}
    q = p.copy()
    q.logit_bias["5"] = 1.0
    assert p.logit_bias == {"4": 2.0}
