"""The scheduler's per-step host work without a model: ms per ``Scheduler._sample`` call (with
penalties, batch unchanged or changing every step) and per ``SchedulePolicy.order`` call.

    python -m plait.bench.bench_hot_path [--batch 32] [--vocab 49152] [--steps 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.request import Req
from plait.runtime.worker.schedule_policy import SchedulePolicy
from plait.runtime.worker.scheduler import Scheduler, SchedulerConfig
from plait.runtime.worker.stop import StopChecker

PENALTIES = {"frequency_penalty": 0.3, "presence_penalty": 0.2, "repetition_penalty": 1.1}
# greedy and top-k rows keep the draw itself cheap, so the per-step bookkeeping shows
GREEDY = {"temperature": 0.0}
TOP_K = {"temperature": 0.8, "top_k": 50}


def make_scheduler(vocab: int) -> Scheduler:
    kv = CacheManager(ReqToTokenPool(8, 64), TokenToKVPool(64, 1, 1, 1, torch.float32))
    runner = SimpleNamespace(device=torch.device("cpu"))
    return Scheduler(runner, kv, StopChecker(None, {0}, 1 << 20), vocab, SchedulerConfig())


def make_reqs(n: int, vocab: int, prompt: int, output: int, penalties: bool) -> list[Req]:
    rng = random.Random(0)
    kinds = [{**kind, **(PENALTIES if penalties else {})} for kind in (GREEDY, TOP_K)]
    return [
        Req(
            f"r{i}",
            [rng.randrange(vocab) for _ in range(prompt)],
            SamplingParams(**kinds[i % 2]),
            output_ids=[rng.randrange(vocab) for _ in range(output)],
        )
        for i in range(n)
    ]


def ms_per_call(fn: Callable[[int], None], steps: int, warmup: int = 3) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_sample(args: argparse.Namespace, penalties: bool, rotate: bool) -> float:
    sched = make_scheduler(args.vocab)
    reqs = make_reqs(args.batch + 1, args.vocab, args.prompt, args.output, penalties)
    logits = torch.randn(args.batch, args.vocab, generator=torch.Generator().manual_seed(0))

    def step(i: int) -> None:
        # rotate: one request leaves and another joins every step (a new batch each time)
        k = i % (args.batch + 1) if rotate else args.batch
        sched._sample(reqs[:k] + reqs[k + 1 :], logits)

    return ms_per_call(step, args.steps)


def bench_order(args: argparse.Namespace) -> float:
    kv = CacheManager(ReqToTokenPool(8, 4096), TokenToKVPool(1 << 16, 1, 1, 1, torch.float32))
    rng = random.Random(1)
    stem = [rng.randrange(args.vocab) for _ in range(512)]
    kv.tree.insert(stem, kv.kv_pool.alloc(len(stem)))
    waiting = [
        Req(f"w{i}", stem + [rng.randrange(args.vocab) for _ in range(512)], SamplingParams())
        for i in range(128)
    ]
    policy = SchedulePolicy("lpm", kv)
    return ms_per_call(lambda _: policy.order(waiting), args.steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=49152)  # SmolLM2's
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--output", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = f"batch {args.batch}, vocab {args.vocab}, {args.prompt} + {args.output} tokens"
    print(f"_sample ({shape}), ms per call, median of {args.steps}")
    print(f"  penalties, same batch:        {bench_sample(args, True, False):7.2f}")
    print(f"  penalties, new batch per step: {bench_sample(args, True, True):7.2f}")
    print(f"  no penalties, same batch:     {bench_sample(args, False, False):7.2f}")
    print(f"SchedulePolicy.order, lpm, 128 waiting of 1024 tokens: {bench_order(args):7.2f}")


if __name__ == "__main__":
    main()
