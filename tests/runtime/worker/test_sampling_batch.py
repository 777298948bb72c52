"""The sampling info kept across steps is the info a fresh build would give, step for step."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import torch

from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.penalties import count_new_tokens_, mark_new_tokens_, token_counts
from plait.runtime.worker.request import Req
from plait.runtime.worker.sampler import Sampler
from plait.runtime.worker.sampling_batch import SamplingBatch
from plait.runtime.worker.sampling_info import SamplingBatchInfo

VOCAB = 60
EOS = [0, 1]


def fresh(reqs: list[Req], eos: list[int] = EOS, vocab: int = VOCAB) -> SamplingBatchInfo:
    return SamplingBatchInfo.build(
        [r.sampling_params for r in reqs],
        [r.output_ids for r in reqs],
        [r.input_ids for r in reqs],
        eos_token_ids=eos,
        vocab_size=vocab,
        device="cpu",
        seeds=[r.sampling_seed for r in reqs],
    )


def assert_same_info(got: SamplingBatchInfo, want: SamplingBatchInfo) -> None:
    for f in dataclasses.fields(SamplingBatchInfo):
        if f.name == "vocab_mask":
            continue
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor), f.name
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            assert torch.equal(a, b), f.name
        else:
            assert a == b, f.name


def make_req(i: int, rng: random.Random, **params) -> Req:
    prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randrange(1, 12))]
    return Req(f"r{i}", prompt, SamplingParams(**params))


KINDS = [
    {"temperature": 0.0, "repetition_penalty": 1.3},
    {"seed": 5, "frequency_penalty": 0.5, "presence_penalty": 0.25, "top_k": 7},
    {"min_new_tokens": 3, "stop_token_ids": [9, 10], "top_p": 0.8},
    {"temperature": 0.7, "repetition_penalty": 0.8, "frequency_penalty": -0.3},
    {"temperature": 0.0},
    {"min_new_tokens": 6, "presence_penalty": 1.0, "min_p": 0.05},
]


def run_step(batch: SamplingBatch, reqs: list[Req], sampler: Sampler, gen: torch.Generator) -> None:
    info = batch.prepare(reqs)
    assert_same_info(info, fresh(reqs))
    logits = torch.randn(len(reqs), VOCAB, generator=gen)
    ids = sampler(logits, info, False).next_token_ids
    for req, token in zip(reqs, ids.tolist()):
        req.append_output(token)
    batch.advance(ids)


def test_kept_info_equals_a_fresh_build_through_batch_changes() -> None:
    rng, gen, sampler = random.Random(0), torch.Generator().manual_seed(0), Sampler()
    reqs = [make_req(i, rng, **KINDS[i % len(KINDS)]) for i in range(8)]
    batch = SamplingBatch(EOS, VOCAB, torch.device("cpu"))
    for _ in range(3):
        run_step(batch, reqs, sampler, gen)
    kept = batch.info

    # unchanged batch: the same tensors, advanced in place
    run_step(batch, reqs, sampler, gen)
    assert batch.info is kept

    # one finishes, one joins with history, one is retracted and re-admitted at once
    # (same outputs, but it is recounted), the order changes
    left, retracted = reqs[2], reqs[5]
    joined = make_req(8, rng, **KINDS[1])
    for t in [3, 3, 4]:
        joined.append_output(t)
    retracted.retractions += 1
    reqs = [reqs[7], joined, *reqs[:2], *reqs[3:7]]
    assert left not in reqs
    for _ in range(4):  # the retracted one crosses its min_new_tokens (6) on the way
        run_step(batch, reqs, sampler, gen)
    assert not batch.info.need_min_tokens

    # a jump-forward rewrites one request's outputs to a different text of the same length
    jumped = reqs[3]
    assert jumped.sampling_params.frequency_penalty != 0
    jumped.set_output([(t + 1) % VOCAB for t in jumped.output_ids])
    for _ in range(3):
        run_step(batch, reqs, sampler, gen)

    # a request leaves for a step and comes back
    run_step(batch, reqs[1:], sampler, gen)
    run_step(batch, reqs, sampler, gen)


def test_penalty_counts_advance_like_a_count_from_scratch() -> None:
    gen = torch.Generator().manual_seed(1)
    prompts = [[3, 3, 7], [], [1, 2]]
    outputs: list[list[int]] = [[], [5], [2, 2]]
    counting = torch.tensor([[1.0], [0.0], [1.0]])  # row 1 has no frequency penalty
    tracking = torch.tensor([[True], [True], [False]])  # row 2 has no repetition penalty
    counts = token_counts([outputs[0], [], outputs[2]], 10, "cpu")
    seen = token_counts([prompts[0] + outputs[0], prompts[1] + outputs[1], []], 10, "cpu") > 0
    for _ in range(20):
        ids = torch.randint(0, 10, (3,), generator=gen)
        count_new_tokens_(counts, ids, counting)
        mark_new_tokens_(seen, ids, tracking)
        for row, token in zip(outputs, ids.tolist()):
            row.append(token)
    for i in range(3):
        want = Counter(outputs[i]) if counting[i] else Counter()
        assert counts[i].tolist() == [float(want[t]) for t in range(10)]
        history = set(prompts[i] + outputs[i]) if tracking[i] else set()
        assert seen[i].tolist() == [t in history for t in range(10)]


def test_an_unseeded_request_keeps_one_seed_for_its_whole_life() -> None:
    rng, gen, sampler = random.Random(2), torch.Generator().manual_seed(2), Sampler()
    target = make_req(0, rng, temperature=1.0, top_k=20)
    twin = Req("twin", list(target.input_ids), target.sampling_params)
    twin.sampling_seed = target.sampling_seed
    others = [make_req(i, rng, **KINDS[i % len(KINDS)]) for i in range(1, 6)]
    alone = SamplingBatch(EOS, VOCAB, torch.device("cpu"))
    batched = SamplingBatch(EOS, VOCAB, torch.device("cpu"))
    for step in range(12):
        row = torch.randn(1, VOCAB, generator=gen)
        info = alone.prepare([target])
        token = sampler(row, info, False).next_token_ids
        target.append_output(int(token[0]))
        alone.advance(token)

        reqs = others[: step % 4] + [twin] + others[step % 4 :]  # a new batch every step
        logits = torch.randn(len(reqs), VOCAB, generator=gen)
        logits[reqs.index(twin)] = row[0]
        ids = sampler(logits, batched.prepare(reqs), False).next_token_ids
        for req, t in zip(reqs, ids.tolist()):
            req.append_output(t)
        batched.advance(ids)
    assert twin.output_ids == target.output_ids
    assert len(set(target.output_ids)) > 3


def test_an_unseeded_request_samples_the_same_alone_and_in_a_batch(tiny_model_dir) -> None:
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=2048)
    params = {"max_new_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    prompt, others = [5, 6, 7, 8, 9], [[100, 200, 30], [40] * 9, list(range(11, 22))]
    torch.manual_seed(3)  # the request draws its seed when it is created: first here
    alone = engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]
    torch.manual_seed(3)
    outs = engine.generate(input_ids=[prompt, *others], sampling_params=params)
    assert outs[0]["output_ids"] == alone
    torch.manual_seed(4)
    assert engine.generate(input_ids=prompt, sampling_params=params)["output_ids"] != alone


class CheckedSampler:
    """Wraps the scheduler's sampler: every info it is handed must equal a fresh build."""

    def __init__(self, engine: Engine) -> None:
        self.scheduler = engine.scheduler
        self.sampler = engine.scheduler.sampler
        self.calls = 0

    def __call__(self, logits, info, return_logprobs):
        sched = self.scheduler
        assert_same_info(info, fresh(sched.sampling.reqs, sched.eos_ids, sched.vocab_size))
        self.calls += 1
        return self.sampler(logits, info, return_logprobs)


def test_scheduler_info_equals_a_fresh_build_under_retraction(tiny_model_dir) -> None:
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 320) for _ in range(rng.randrange(4, 40))] for _ in range(24)]
    kinds = [
        {"temperature": 0, "repetition_penalty": 1.4},
        {"temperature": 0, "frequency_penalty": 0.8, "presence_penalty": 0.3},
        {"seed": 11, "min_new_tokens": 8, "stop_token_ids": [7]},
        {"temperature": 0.8, "top_k": 20, "repetition_penalty": 0.9},
    ]
    params = [{"max_new_tokens": 20, "ignore_eos": True, **kinds[i % 4]} for i in range(24)]
    solo_engine = Engine(tiny_model_dir("llama"), max_total_tokens=4096)
    solo = [
        solo_engine.generate(input_ids=p, sampling_params=s)["output_ids"]
        for p, s in zip(prompts[:8], params[:8])
    ]
    engine = Engine(tiny_model_dir("llama"), max_total_tokens=300, chunked_prefill_size=32)
    checked = engine.scheduler.sampler = CheckedSampler(engine)
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    assert engine.scheduler.stats.retractions > 0, "the pool was meant to force retraction"
    assert checked.calls > 20
    fixed = [i for i in range(8) if i % 4 != 3]  # greedy or seeded: batch-invariant
    assert [outs[i]["output_ids"] for i in fixed] == [solo[i] for i in fixed]
    engine.check_idle()
