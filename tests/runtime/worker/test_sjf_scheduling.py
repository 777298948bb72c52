"""SJF by learned ranking on the tiny model, timed in scheduler steps: a ranker fitted with the
shipped training code (ListMLE) on prompts whose wording sets the answer length beats FCFS on
mean latency, and the starvation bound holds (no request waits longer than the bound plus one
batch). The shipped SmolLM2 ranker itself is measured in bench/bench_scheduling.py."""

from __future__ import annotations

import random

import pytest

from plait.bench.sched_driver import Arrival, run_arrivals
from plait.bench.sjf_ranker.train import fit_ranker, kendall_tau_b
from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams

# a "wording" token per answer length, as "in one word" / "in detail" are in real prompts
LENGTH_OF = {20: 2, 21: 10, 22: 30}
MAX_RUNNING = 2


def prompt(rng: random.Random, marker: int) -> list[int]:
    filler = [rng.randrange(40, 300) for _ in range(rng.randrange(3, 9))]
    return filler[:2] + [marker] + filler[2:]


def forced(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0)


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory):
    rng = random.Random(1)
    markers = [rng.choice(list(LENGTH_OF)) for _ in range(90)]
    prompts = [prompt(rng, m) for m in markers]
    lengths = [LENGTH_OF[m] + rng.randrange(0, 3) for m in markers]
    ranker = fit_ranker(prompts, lengths, buckets=1024, steps=300)
    held = [rng.choice(list(LENGTH_OF)) for _ in range(30)]
    tau = kendall_tau_b(
        [ranker.score_ids(prompt(rng, m)) for m in held], [LENGTH_OF[m] for m in held]
    )
    assert tau > 0.6, "the ranker learned the order"
    path = tmp_path_factory.mktemp("ranker") / "ranker.npz"
    ranker.save(path)
    return path


def engine(model, policy: str, ranker_path, starvation: int = 10_000) -> Engine:
    return Engine(
        model,
        max_total_tokens=4096,
        schedule_policy=policy,
        max_running_requests=MAX_RUNNING,
        enable_mixed_chunk=False,
        sjf_ranker_path=str(ranker_path),
        sjf_starvation_steps=starvation,
    )


def test_the_learned_order_beats_fcfs_on_mean_latency_in_steps(tiny_model_dir, ranker_path):
    model = tiny_model_dir("llama")
    rng = random.Random(7)
    markers = [rng.choice(list(LENGTH_OF)) for _ in range(12)]
    jobs = [(f"r{i}", prompt(rng, m), LENGTH_OF[m]) for i, m in enumerate(markers)]

    def mean_latency(policy: str) -> float:
        arrivals = [Arrival(0, rid, ids, forced(n)) for rid, ids, n in jobs]
        eng = engine(model, policy, ranker_path)
        timings = run_arrivals(eng.core, arrivals)
        eng.check_idle()
        return sum(t.latency for t in timings.values()) / len(timings)

    fcfs, sjf = mean_latency("fcfs"), mean_latency("sjf")
    assert sjf < 0.8 * fcfs, (sjf, fcfs)


def test_a_long_request_behind_a_stream_of_short_ones_waits_at_most_the_bound_plus_a_batch(
    tiny_model_dir, ranker_path
):
    model = tiny_model_dir("llama")
    rng = random.Random(3)
    # one short request per tick from tick 0: more than two slots serve, so shorts always
    # wait; the long one arrives into that queue
    long_job = Arrival(4, "long", prompt(rng, 22), forced(LENGTH_OF[22]))
    shorts = [Arrival(t, f"s{t}", prompt(rng, 20), forced(LENGTH_OF[20])) for t in range(60)]
    bound = 15

    starved = run_arrivals(engine(model, "sjf", ranker_path).core, [long_job, *shorts])
    assert starved["long"].wait > bound + LENGTH_OF[22], "without promotion it starves"

    eng = engine(model, "sjf", ranker_path, starvation=bound)
    timings = run_arrivals(eng.core, [long_job, *shorts])
    # promoted once it has waited ``bound`` steps; admitted when the next slot frees, at
    # most one batch later (the longest request running then)
    longest = max(LENGTH_OF.values())
    assert all(t.wait <= bound + longest + 1 for t in timings.values())
    eng.check_idle()
