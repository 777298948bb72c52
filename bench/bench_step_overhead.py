"""Per-step cost of the runtime outside the model forward: scheduler, sampler, output building.

Decode-dominated offline batches on the default model (SmolLM2-135M-Instruct): distinct short
prompts, ``max_new_tokens`` new tokens each with ``ignore_eos``, at each batch size, greedy and
sampled (temperature 0.8, top_p 0.9, frequency_penalty 0.5: the penalties are the costly part),
plus the ``Engine.generate(..., stream=True)`` consumer path (greedy). ``scheduler.step`` and
``runner.forward`` are wrapped with timers on the instance, so

  total     = time inside scheduler.step, per step
  forward   = time inside runner.forward (the model), per step
  overhead  = total - forward: scheduling, batch preparation, sampling, stop checks
  wall      = the whole generate call (or stream consumption) per step: overhead + the engine's
              own loop and its result / chunk building

Only ``plait.runtime.Engine`` is imported, and the scheduler is found as ``engine.scheduler`` or
``engine.core.scheduler``, so the script runs unchanged across runtime layouts:

  python bench/bench_step_overhead.py [--batches 1,32] [--max-new-tokens 128] [--label before]
                                      [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from plait.bench.step_timers import MethodTimer, device_sync, scheduler_and_runner
from plait.runtime import Engine

GREEDY: dict[str, Any] = {"temperature": 0}
SAMPLED: dict[str, Any] = {"temperature": 0.8, "top_p": 0.9, "frequency_penalty": 0.5}

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "the first snow of winter",
    "a baker in Paris",
    "a dragon that cannot fly",
    "an old map",
    "a night train",
    "a chess tournament",
]


@dataclass
class Row:
    config: str
    batch: int
    steps: int
    forwards: int
    wall: float
    step: float
    forward: float

    def per_step(self, seconds: float) -> float:
        return seconds / max(self.steps, 1) * 1e3

    @property
    def overhead(self) -> float:
        return self.step - self.forward


def prompts_for(run: int, batch: int) -> list[str]:
    """Distinct short prompts; the run tag comes first so no two runs share a cached prefix."""
    return [
        f"[{run}.{i}] Write a long story about {TOPICS[i % len(TOPICS)]}, part {i // len(TOPICS)}."
        for i in range(batch)
    ]


def measure(
    engine: Engine, config: str, batch: int, params: dict[str, Any], run: int, stream: bool
) -> Row:
    sched, runner = scheduler_and_runner(engine)
    prompts = prompts_for(run, batch)
    with (
        MethodTimer(sched, "step") as step_t,
        MethodTimer(runner, "forward", device_sync(runner)) as fwd_t,
    ):
        t = time.perf_counter()
        if stream:
            chunks = sum(1 for _ in engine.generate(prompts, params, stream=True))
            assert chunks > 0
        else:
            outs = engine.generate(prompts, params)
            outs = outs if isinstance(outs, list) else [outs]
            assert all(
                o["meta_info"]["completion_tokens"] == params["max_new_tokens"] for o in outs
            )
        wall = time.perf_counter() - t
    if step_t.calls == 0 or fwd_t.calls == 0:
        raise RuntimeError("the step / forward timers saw no calls: the wrapped methods are unused")
    return Row(config, batch, step_t.calls, fwd_t.calls, wall, step_t.seconds, fwd_t.seconds)


def median_row(rows: list[Row]) -> Row:
    """The repeat with the median overhead per step."""
    rows = sorted(rows, key=lambda r: r.overhead / max(r.steps, 1))
    return rows[len(rows) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--label", default="", help="a tag printed in every row, e.g. before/after")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell; the median is shown")
    ap.add_argument("--no-stream", action="store_true", help="skip the stream=True rows")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]

    t_load = time.perf_counter()
    engine = Engine()
    load_s = time.perf_counter() - t_load
    print(
        f"# default model loaded in {load_s:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"{args.max_new_tokens} new tokens, ignore_eos, {args.repeats} repeat(s); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    warm = {"max_new_tokens": 8, "temperature": 0.8, "frequency_penalty": 0.5, "ignore_eos": True}
    engine.generate(prompts_for(-1, max(batches)), warm)

    cells: list[tuple[str, int, dict[str, Any], bool]] = []
    for batch in batches:
        cells.append(("greedy", batch, GREEDY, False))
        cells.append(("sampled", batch, SAMPLED, False))
        if not args.no_stream:
            cells.append(("greedy stream", batch, GREEDY, True))

    rows: list[Row] = []
    run = 0
    bar = tqdm(total=len(cells) * args.repeats, desc="runs", leave=False)
    for config, batch, extra, stream in cells:
        params = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True, **extra}
        reps = []
        for _ in range(args.repeats):
            bar.set_postfix_str(f"{config} bs={batch}")
            reps.append(measure(engine, config, batch, params, run, stream))
            run += 1
            bar.update()
        rows.append(median_row(reps))
        if args.repeats > 1:
            spread = [r.per_step(r.overhead) for r in reps]
            tqdm.write(
                f"{config} bs={batch}: overhead ms/step over repeats "
                f"{', '.join(f'{s:.2f}' for s in spread)} (stdev {statistics.pstdev(spread):.2f})"
            )
    bar.close()

    lw = max(8, len(args.label))
    header = (
        f"{'label':{lw}s} {'config':14s} {'batch':>5s} {'steps':>5s} {'wall':>8s} {'total':>8s} "
        f"{'forward':>8s} {'overhead':>8s} {'us/req/step':>11s}"
    )
    print(f"# load average at the end {os.getloadavg()[0]:.2f} (1 min)")
    print("ms/step: wall = whole generate call, total = in scheduler.step, forward = in the model")
    print(header)
    print("-" * len(header))
    for r in rows:
        us_req = r.overhead / max(r.steps, 1) / r.batch * 1e6
        print(
            f"{args.label:{lw}s} {r.config:14s} {r.batch:5d} {r.steps:5d} {r.per_step(r.wall):8.2f} "
            f"{r.per_step(r.step):8.2f} {r.per_step(r.forward):8.2f} "
            f"{r.per_step(r.overhead):8.2f} {us_req:11.1f}"
        )


if __name__ == "__main__":
    main()
