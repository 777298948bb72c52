"""Streaming cost along one long output: does the per-chunk cost grow with the output length?

One request on the default model (SmolLM2-135M-Instruct), ``max_new_tokens`` new tokens (default
1000, which keeps a run under ~4 minutes on 2 cores; 2000 also fits the 8192 context),
``ignore_eos``, greedy. For the first and the last ``--window`` chunks it prints p50 and mean of

  runtime  interval  client-side arrival interval of ``plait.Runtime().generate_stream`` chunks
                     (a real worker process over ZMQ)
  engine   interval  consumer-side interval of in-process ``Engine.generate(stream=True)`` chunks
  engine   gen-step  time inside the generator excluding ``scheduler.step`` (per-chunk result /
                     text / delta building)
  engine   step-fwd  time inside ``scheduler.step`` excluding ``runner.forward`` (scheduler and
                     sampler)
  engine   forward   time inside ``runner.forward`` (the model; attention grows with the context,
                     so this one is expected to rise)

and the ratio last/first: a path whose per-chunk cost does not depend on the output length gives
~1.0. The intervals include the forward, so they rise with it. Only ``plait.Runtime`` and
``plait.runtime.Engine`` are used, and the scheduler is found as ``engine.scheduler`` or
``engine.core.scheduler``, so the script runs unchanged across runtime layouts:

  python bench/bench_stream.py [--max-new-tokens 1000] [--window 200] [--label before]
                               [--parts runtime,engine]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

import plait
from plait.bench.step_timers import MethodTimer, device_sync, scheduler_and_runner
from plait.runtime import Engine

PROMPT = "Write a very long story about a lighthouse keeper and a storm that lasts a week."


@dataclass
class Series:
    path: str
    measure: str
    values: list[float]  # seconds, one per chunk (or per interval)
    tokens_first: float = 1.0  # tokens per chunk in the first / last window
    tokens_last: float = 1.0


def params(max_new: int) -> dict[str, Any]:
    return {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}


def timed_chunks(
    chunks: Iterator[dict[str, Any]], total: int, desc: str
) -> tuple[list[float], list[int]]:
    """Arrival time of every chunk and the output length it brought the request to."""
    arrivals: list[float] = []
    lengths: list[int] = []
    with tqdm(total=total, desc=desc, leave=False, unit="tok") as bar:
        for chunk in chunks:
            arrivals.append(time.perf_counter())
            n = len(chunk["output_ids"])
            bar.update(n - (lengths[-1] if lengths else 0))
            lengths.append(n)
    return arrivals, lengths


def tokens_per_chunk(lengths: list[int], window: int) -> tuple[float, float]:
    steps = [b - a for a, b in zip(lengths, lengths[1:])]
    return statistics.fmean(steps[:window]), statistics.fmean(steps[-window:])


def run_runtime(max_new: int, window: int) -> list[Series]:
    rt = plait.Runtime()
    try:
        for _ in rt.generate_stream("Warm up.", params(16)):
            pass
        arrivals, lengths = timed_chunks(
            rt.generate_stream(PROMPT, params(max_new)), max_new, "runtime stream"
        )
    finally:
        rt.shutdown()
    assert lengths[-1] == max_new, lengths[-1]
    intervals = [b - a for a, b in zip(arrivals, arrivals[1:])]
    first, last = tokens_per_chunk(lengths, window)
    return [Series("runtime", "interval", intervals, first, last)]


def run_engine(max_new: int, window: int) -> list[Series]:
    engine = Engine()
    engine.generate("Warm up.", params(16))
    sched, runner = scheduler_and_runner(engine)
    in_gen: list[float] = []
    in_step: list[float] = []
    in_fwd: list[float] = []
    arrivals: list[float] = []
    lengths: list[int] = []
    with (
        MethodTimer(sched, "step") as step_t,
        MethodTimer(runner, "forward", device_sync(runner)) as fwd_t,
        tqdm(total=max_new, desc="engine stream", leave=False, unit="tok") as bar,
    ):
        it = iter(engine.generate(PROMPT, params(max_new), stream=True))
        while True:
            s0, f0 = step_t.seconds, fwd_t.seconds
            t0 = time.perf_counter()
            try:
                chunk = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            arrivals.append(t1)
            in_gen.append(t1 - t0)
            in_step.append(step_t.seconds - s0)
            in_fwd.append(fwd_t.seconds - f0)
            n = len(chunk["output_ids"])
            bar.update(n - (lengths[-1] if lengths else 0))
            lengths.append(n)
    if step_t.calls == 0 or fwd_t.calls == 0:
        raise RuntimeError("the step / forward timers saw no calls: the wrapped methods are unused")
    assert lengths[-1] == max_new, lengths[-1]
    intervals = [b - a for a, b in zip(arrivals, arrivals[1:])]
    first, last = tokens_per_chunk(lengths, window)
    return [
        Series("engine", "interval", intervals, first, last),
        Series("engine", "gen-step", [g - s for g, s in zip(in_gen, in_step)], first, last),
        Series("engine", "step-fwd", [s - f for s, f in zip(in_step, in_fwd)], first, last),
        Series("engine", "forward", in_fwd, first, last),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new-tokens", type=int, default=1000)
    ap.add_argument("--window", type=int, default=200, help="chunks in the first / last window")
    ap.add_argument("--label", default="", help="a tag printed in every row, e.g. before/after")
    ap.add_argument("--parts", default="runtime,engine", help="runtime, engine or both")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.max_new_tokens < 2 * args.window + 1:
        ap.error("--max-new-tokens must exceed twice --window")

    print(
        f"# one request, {args.max_new_tokens} new tokens, greedy, ignore_eos; first vs last "
        f"{args.window} chunks; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    series: list[Series] = []
    t = time.perf_counter()
    if "runtime" in parts:
        series += run_runtime(args.max_new_tokens, args.window)
        tqdm.write(f"runtime part done at {time.perf_counter() - t:.0f} s")
    if "engine" in parts:
        series += run_engine(args.max_new_tokens, args.window)
        tqdm.write(f"engine part done at {time.perf_counter() - t:.0f} s")

    w = args.window
    lw = max(8, len(args.label))
    header = (
        f"{'label':{lw}s} {'path':8s} {'measure':9s} {'tok/chunk':>9s} "
        f"{'first p50':>9s} {'mean':>8s} {'last p50':>9s} {'mean':>8s} "
        f"{'ratio p50':>9s} {'mean':>6s}"
    )
    print(f"# load average at the end {os.getloadavg()[0]:.2f} (1 min)")
    print(f"ms per chunk, first {w} vs last {w} chunks; ratio = last / first")
    print(header)
    print("-" * len(header))
    for s in series:
        a, b = s.values[:w], s.values[-w:]
        a50, b50 = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        am, bm = statistics.fmean(a) * 1e3, statistics.fmean(b) * 1e3
        print(
            f"{args.label:{lw}s} {s.path:8s} {s.measure:9s} "
            f"{s.tokens_first:4.2f}/{s.tokens_last:4.2f} "
            f"{a50:9.3f} {am:8.3f} {b50:9.3f} {bm:8.3f} "
            f"{b50 / a50 if a50 else float('nan'):9.2f} {bm / am if am else float('nan'):6.2f}"
        )


if __name__ == "__main__":
    main()
