"""Decode-room reservation and retraction (``Scheduler._ensure_decode_room``), asserted directly
on a tiny KV pool: who is retracted, where they go, the new ``new_token_ratio`` and the KV
accounting afterwards. Every expected number is worked out by hand from the scenario."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.prefill_adder import CLIP_MAX_NEW_TOKENS
from plait.runtime.worker.request import Req
from plait.runtime.worker.schedule_batch import prepare_extend
from plait.runtime.worker.scheduler import RETRACT_DECODE_STEPS, Scheduler

ModelDir = Callable[..., Path]


def make_scheduler(tiny_model_dir: ModelDir, max_total_tokens: int) -> Scheduler:
    return Engine(tiny_model_dir("llama"), max_total_tokens=max_total_tokens).scheduler


def start_running(
    sched: Scheduler, rid: str, prompt_len: int, first: int, n_out: int, max_new_tokens: int = 50
) -> Req:
    """Puts a request in the running batch as the scheduler leaves it mid-decode: ``n_out``
    tokens sampled, KV slots (owned, none in the tree) for all but the newest."""
    ids = list(range(first, first + prompt_len))
    req = Req(rid, ids, SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True))
    req.set_output([3] * n_out)
    sched.kv.match(req)
    sched.kv.lock(req)
    req.extend_len = req.seq_len - 1
    prepare_extend([req], sched.kv, sched.device)
    req.kv_len += req.extend_len
    sched.running.append(req)
    return req


def four_running(sched: Scheduler, max_new_a: int = 50, max_new_d: int = 50) -> None:
    """A (30-token prompt, 5 out), B (40, 2), C (20, 2), D (10, 8): they own 34 + 41 + 21 + 17 =
    113 KV slots; ``w`` waits, unadmitted."""
    start_running(sched, "A", 30, 10, 5, max_new_a)
    start_running(sched, "B", 40, 50, 2)
    start_running(sched, "C", 20, 100, 2)
    start_running(sched, "D", 10, 130, 8, max_new_d)
    sched.waiting = [Req("w", [200, 201], SamplingParams())]


def owned_slots(sched: Scheduler) -> int:
    return sum(r.kv_len - len(r.prefix_indices) for r in sched.running)


def release_running(sched: Scheduler) -> None:
    for req in sched.running:
        sched.kv.release(req)
    sched.running = []


def rids(reqs: list[Req]) -> list[str]:
    return [r.rid for r in reqs]


def test_the_least_advanced_requests_go_to_the_front_of_the_queue_until_the_rest_have_room(
    tiny_model_dir,
):
    assert RETRACT_DECODE_STEPS == 20, "the pool below is sized for 20 steps of room"
    sched = make_scheduler(tiny_model_dir, 115)  # 2 free slots for 4 requests
    four_running(sched)
    b, c = sched.running[1], sched.running[2]

    assert sched._ensure_decode_room() == []
    # by (outputs, -prompt): B (2, -40), C (2, -20), A (5, -30), D (8, -10). Retracting B
    # leaves 2 + 41 = 43 < 3 * 20; retracting C leaves 43 + 21 = 64 >= 2 * 20.
    assert rids(sched.running) == ["A", "D"]
    assert rids(sched.waiting) == ["B", "C", "w"]
    assert sched.stats.retractions == 2 and (b.retractions, c.retractions) == (1, 1)
    assert (b.req_pool_idx, b.kv_len, len(b.prefix_indices)) == (None, 0, 0)
    assert b.output_ids == [3, 3]  # progress kept; its KV is in the tree
    kv = sched.kv
    assert (kv.available_size(), kv.evictable_size()) == (2, 41 + 21)
    assert kv.available_size() + kv.evictable_size() + owned_slots(sched) == kv.total_size()
    kv.tree.check_invariant(num_in_use=34 + 17)

    kv.match(b)  # re-admission reuses everything it had computed
    assert len(b.prefix_indices) == 41

    release_running(sched)
    kv.check_idle()


@pytest.mark.parametrize(
    ("max_new_a", "max_new_d", "ratio"),
    [
        (50, 50, (5 + 8 + 20 * 2) / (50 + 50)),
        (50, CLIP_MAX_NEW_TOKENS + 100, (5 + 8 + 20 * 2) / (50 + CLIP_MAX_NEW_TOKENS)),
        (6, 9, 1.0),  # (13 + 40) / 15 is capped at 1
    ],
)
def test_retraction_resets_new_token_ratio_to_the_room_the_survivors_need(
    tiny_model_dir, max_new_a, max_new_d, ratio
):
    sched = make_scheduler(tiny_model_dir, 115)
    four_running(sched, max_new_a, max_new_d)
    sched._ensure_decode_room()
    assert rids(sched.running) == ["A", "D"]
    # (tokens decoded + RETRACT_DECODE_STEPS per survivor) / (their clipped max_new_tokens)
    assert sched.new_token_ratio == pytest.approx(ratio)
    release_running(sched)
    sched.kv.check_idle()


@pytest.mark.parametrize(("free", "retracted"), [(3, ["B", "C"]), (4, [])])
def test_retraction_starts_only_when_the_batch_cannot_decode_one_step(
    tiny_model_dir, free, retracted
):
    sched = make_scheduler(tiny_model_dir, 113 + free)
    four_running(sched)
    ratio = sched.new_token_ratio
    assert sched._ensure_decode_room() == []
    assert rids(sched.waiting) == retracted + ["w"]
    assert sched.stats.retractions == len(retracted)
    if not retracted:  # 4 slots for 4 requests is enough for now, though short of 20 steps
        assert rids(sched.running) == ["A", "B", "C", "D"]
        assert sched.new_token_ratio == ratio
    release_running(sched)
    sched.kv.check_idle()


def test_evictable_cached_tokens_count_as_decode_room(tiny_model_dir):
    sched = make_scheduler(tiny_model_dir, 113 + 50)
    slots = sched.kv.alloc_tokens(50)
    assert slots is not None
    sched.kv.tree.insert(list(range(250, 300)), slots)  # 50 evictable, 0 free after the four
    four_running(sched)
    assert (sched.kv.available_size(), sched.kv.evictable_size()) == (0, 50)
    assert sched._ensure_decode_room() == []
    assert rids(sched.running) == ["A", "B", "C", "D"] and sched.stats.retractions == 0
    release_running(sched)
    sched.kv.check_idle()


def test_a_request_alone_with_no_room_finishes_with_length(tiny_model_dir):
    sched = make_scheduler(tiny_model_dir, 41)
    b = start_running(sched, "B", 40, 50, 2)  # owns all 41 slots
    ratio = sched.new_token_ratio
    assert sched._ensure_decode_room() == [b]
    assert b.finished_reason is not None
    assert (b.finished_reason.type, b.finished_reason.message) == ("length", "KV cache is full")
    assert sched.running == [] and sched.waiting == []
    assert sched.stats.retractions == 0 and sched.new_token_ratio == ratio
    assert (sched.kv.available_size(), sched.kv.evictable_size()) == (0, 41)
    sched.kv.check_idle()
