"""Several decode forwards per scheduler step (``num_scheduler_steps``) and a stream's chunk size
(``stream_interval``) on a tiny random model: the same tokens, fewer records, and no arrival
waiting behind a long step."""

from __future__ import annotations

import random

import pytest
import zmq

from plait.runtime import messages as m
from plait.runtime.config import EngineConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.messages import ReqOutput
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore
from plait.runtime.worker.process import start_worker

PROMPTS = [[random.Random(i).randrange(3, 320) for _ in range(n)] for i, n in enumerate((1, 6, 30))]
# each request ends at another step: the batch shrinks inside a multi-step
PARAMS = [
    {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True},
    {"max_new_tokens": 23, "temperature": 0},  # may stop at EOS
    {"max_new_tokens": 17, "temperature": 0.8, "top_p": 0.9, "seed": 7, "ignore_eos": True},
]


def _core(tiny_model_dir, **options) -> EngineCore:
    return EngineCore(
        EngineConfig.from_kwargs(tiny_model_dir("llama"), max_total_tokens=2048, **options)
    )


def _run(core: EngineCore, stream: bool = False) -> dict[str, list[ReqOutput]]:
    for i, (ids, params) in enumerate(zip(PROMPTS, PARAMS)):
        core.add_request(f"r{i}", ids, SamplingParams.from_dict(params), stream=stream)
    records: dict[str, list[ReqOutput]] = {}
    while core.has_work:
        for out in core.step():
            records.setdefault(out.rid, []).append(out)
    core.check_idle()
    return records


def _tokens(records: list[ReqOutput]) -> list[int]:
    ids: list[int] = []
    for out in records:
        ids = ids[: out.start] + out.new_ids
    return ids


@pytest.mark.parametrize("steps", [2, 8, 64])
def test_several_decode_forwards_a_step_give_the_same_tokens(tiny_model_dir, steps):
    """Greedy and seeded sampling, requests ending at different steps (one maybe at EOS): every
    token and finish reason is a one-forward step's, and the KV accounting ends clean."""
    plain = _core(tiny_model_dir)
    expected = _run(plain)
    core = _core(tiny_model_dir, num_scheduler_steps=steps)
    got = _run(core)
    assert {r: _tokens(v) for r, v in got.items()} == {r: _tokens(v) for r, v in expected.items()}
    assert {r: v[-1].finish_reason for r, v in got.items()} == {
        r: v[-1].finish_reason for r, v in expected.items()
    }
    assert core.scheduler.stats.forward_count == plain.scheduler.stats.forward_count
    assert core.scheduler.step_count < plain.scheduler.step_count


def test_a_decode_only_step_runs_up_to_the_configured_forwards(tiny_model_dir):
    core = _core(tiny_model_dir, num_scheduler_steps=8)
    params = SamplingParams.from_dict({"max_new_tokens": 100, "temperature": 0, "ignore_eos": True})
    core.add_request("a", [5, 6, 7], params)
    core.step()  # the prefill and its first token
    stats = core.scheduler.stats
    before = stats.forward_count
    core.step()
    assert stats.forward_count == before + 8
    core.step(interrupted=lambda: True)  # a message waits: the step ends after one forward
    assert stats.forward_count == before + 9
    core.add_request("b", [9], params)  # queued: this step admits it; it decodes no further
    core.step()
    assert stats.forward_count == before + 10
    core.step()  # both decode now
    assert stats.forward_count == before + 18
    assert core.abort("a") and core.abort("b")
    core.step()
    core.check_idle()


def test_a_step_ends_when_a_record_is_due(tiny_model_dir):
    """A request that finishes, or a stream with a chunk to send, ends the step: its record
    goes out at once, not after the step's other forwards."""
    core = _core(tiny_model_dir, num_scheduler_steps=50, stream_interval=3)
    greedy = {"temperature": 0, "ignore_eos": True}
    core.add_request("short", [5, 6], SamplingParams.from_dict({"max_new_tokens": 3, **greedy}))
    core.add_request("long", [7], SamplingParams.from_dict({"max_new_tokens": 40, **greedy}))
    core.step()  # the prefill: one token each
    stats = core.scheduler.stats
    before = stats.forward_count
    (out,) = core.step()
    assert out.rid == "short" and out.finish_reason is not None
    assert stats.forward_count == before + 2
    core.add_request(
        "stream", [8], SamplingParams.from_dict({"max_new_tokens": 30, **greedy}), stream=True
    )
    core.step()  # its prefill, and one token of "long" mixed in
    before = stats.forward_count
    assert [o.rid for o in core.step()] == ["stream"]  # 3 tokens since its first record
    assert stats.forward_count == before + 3
    assert core.abort("long") and core.abort("stream")
    core.step()
    core.check_idle()


def test_a_constrained_request_keeps_one_forward_a_step(tiny_lm_dir):
    """Jump-forward and the grammar's masks run between steps: a batch holding a constrained
    request never takes several forwards in one."""
    core = EngineCore(
        EngineConfig.from_kwargs(str(tiny_lm_dir), max_total_tokens=2048, num_scheduler_steps=8)
    )
    assert core.scheduler.grammar is not None
    params = SamplingParams.from_dict({"max_new_tokens": 40, "temperature": 0, "regex": "[ab]{30}"})
    core.add_request("c", [5, 6, 7], params)
    steps, records = 0, []
    while core.has_work:
        records += core.step()
        steps += 1
    (out,) = records
    assert out.error is None and len(out.new_ids) > 8  # it decoded, and did so constrained
    assert 1 < core.scheduler.stats.forward_count <= steps


def test_stream_interval_sends_the_first_token_then_every_k_and_the_end(tiny_model_dir):
    plain = _run(_core(tiny_model_dir), stream=True)
    core = _core(tiny_model_dir, stream_interval=4)
    chunked = _run(core, stream=True)
    for rid, records in chunked.items():
        sizes = [len(o.new_ids) for o in records]
        assert sizes[0] == 1 and all(n == 4 for n in sizes[1:-1]) and 1 <= sizes[-1] <= 4, sizes
        assert [o.finish_reason is not None for o in records] == [False] * (len(sizes) - 1) + [True]
        assert _tokens(records) == _tokens(plain[rid])
    assert all(len(o.new_ids) == 1 for v in plain.values() for o in v if not o.finish_reason)


def test_a_request_s_own_stream_interval_overrides_the_worker_s(tiny_model_dir):
    """``sampling_params.stream_interval`` of one request (SGLang's field; the server's way to
    hear only the first and last token of a non-streamed HTTP request): its records, not the
    others'; an interval past the output's length leaves the first token and the end."""
    core = _core(tiny_model_dir, num_scheduler_steps=8)
    plain = _run(_core(tiny_model_dir), stream=True)
    own = [3, 2**63 - 1, None]
    for i, (ids, params) in enumerate(zip(PROMPTS, PARAMS)):
        sp = SamplingParams.from_dict(params | {"stream_interval": own[i]})
        core.add_request(f"r{i}", ids, sp, stream=True)
    records: dict[str, list[ReqOutput]] = {}
    while core.has_work:
        for out in core.step():
            records.setdefault(out.rid, []).append(out)
    core.check_idle()
    sizes = {rid: [len(o.new_ids) for o in v] for rid, v in records.items()}
    assert sizes["r0"] == [1, 3, 1], sizes  # 5 tokens: first, 3, the end
    assert sizes["r1"][0] == 1 and len(sizes["r1"]) == 2, sizes
    assert all(n == 1 for n in sizes["r2"]), sizes  # the worker's interval: 1
    for rid, v in records.items():
        assert _tokens(v) == _tokens(plain[rid])


@pytest.mark.parametrize("field", ["num_scheduler_steps", "stream_interval"])
def test_counts_below_one_are_refused_by_name(tiny_model_dir, field):
    with pytest.raises(InvalidRequestError, match=field):
        EngineConfig.from_kwargs(tiny_model_dir("llama"), **{field: 0}).validate()


def test_a_request_arriving_during_a_long_multi_step_is_admitted_at_once(tiny_model_dir):
    """The worker ends a multi-step when a message waits on its socket, and a step ends when a
    request finishes: a request sent while another decodes 500 tokens in steps of up to 1,000
    forwards (its stream's chunks 1,000 tokens) finishes first."""
    worker = start_worker(
        tiny_model_dir("llama"),
        max_total_tokens=2048,
        num_scheduler_steps=1000,
        stream_interval=1000,
    )
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.endpoint)
    try:
        greedy = {"temperature": 0, "ignore_eos": True}
        sock.send(
            m.encode(m.GenerateReq("long", [5, 6, 7], {"max_new_tokens": 500, **greedy}, True))
        )
        finished: list[str] = []
        sent_short = False
        while len(finished) < 2:
            assert sock.poll(60_000), "the worker did not answer"
            frame = m.decode(sock.recv())
            assert isinstance(frame, m.BatchOut), frame
            for out in frame.outputs:
                if out.finish_reason is not None:
                    finished.append(out.rid)
            if not sent_short:  # the long request's first token: it decodes from now on
                sock.send(m.encode(m.GenerateReq("short", [9, 8], {"max_new_tokens": 2, **greedy})))
                sent_short = True
        assert finished == ["short", "long"]
    finally:
        sock.close(0)
        worker.stop()
