"""Each claimed phase of a single stream's decode step, on a timeline: the caller's own claiming,
its wait for the other threads' last units, and each worker's start after the post and its time
claiming.

One greedy request of the default model at a time through the in-process ``Engine``, whose fused
step runs a build of ``kernels/cpu_decode.c`` with ``-DPLAIT_CLAIM_TRACE``
(``cpu_decode.variant``): per part of the step (the q/k/v product, attention, the output
product, gate/up, SiLU, down, the head), and separately for each step's first claimed phase
(where a worker asleep since the last step joins late), in us per phase, means over the run:

  total   from the job's post to its last unit done
  own     the caller claiming (its own share, then whatever the others left)
  wait    the caller waiting for the others' last units
  start   a worker's first claim after the post (the workers that computed a unit)
  busy    that worker claiming
  joined  the share of phases a worker computed a unit in

A phase whose ``own`` is near its ``total`` and whose ``start`` and ``wait`` are small is held
by the per-thread rate of its kernel, not by the pool. The read bound (``ReadBound``, the higher
of two readings around each run) is printed beside: this host's bus moves 2x within minutes.

  python bench/bench_claim_trace.py [--variants int4,bfloat16] [--new 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from plait.bench.bench_machine import ReadBound
from plait.bench.bench_step_phases import PROMPT, bench_engine
from plait.kernels import cpu_decode
from plait.runtime.engine import Engine

Sums = dict[str, dict[str, float]]  # ``cpu_decode.claim_trace``'s


def traced_run(engine: Engine, lib: Any, new: int) -> tuple[float, Sums]:
    """Wall us a token, and each slot's sums over one request."""
    cpu_decode.claim_trace(lib)  # cleared
    t = time.perf_counter()
    engine.generate(PROMPT, {"max_new_tokens": new, "temperature": 0, "ignore_eos": True})
    wall = (time.perf_counter() - t) / new * 1e6
    return wall, cpu_decode.claim_trace(lib)


def per_phase(s: dict[str, float], new: int) -> list[float]:
    """A slot's sums as phases a token, then us per phase (total, own, wait), us per joined
    worker (start, busy) and the share joined."""
    n, j = max(s["phases"], 1.0), max(s["joined"], 1.0)
    return [s["phases"] / new, s["total"] / n * 1e6, s["own"] / n * 1e6, s["wait"] / n * 1e6,
            s["start"] / j * 1e6, s["busy"] / j * 1e6, s["joined"] / n]  # fmt: skip


def table(runs: list[Sums], new: int) -> None:
    print("| part | phases a token | total | own | wait | start | busy | joined |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in cpu_decode.CLAIM_TRACE_SLOTS:
        if not any(r[name]["phases"] for r in runs):
            continue
        cols = [statistics.median(per_phase(r[name], new)[k] for r in runs) for k in range(7)]
        print(f"| {name} | {cols[0]:.1f} | " + " | ".join(f"{c:.2f}" for c in cols[1:6])
              + f" | {cols[6]:.0%} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="int4,bfloat16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lib = cpu_decode.variant(["PLAIT_CLAIM_TRACE"])
    bound = ReadBound()
    for variant in args.variants.split(","):
        engine = bench_engine(variant, lib)
        runs, gbps = [], []
        for _ in range(args.repeats):
            before = bound.measure()
            runs.append(traced_run(engine, lib, args.new))
            gbps.append(max(before, bound.measure()) / 1e9)
        print(f"\n## {variant}: {args.new} greedy tokens a run, {args.repeats} runs, read bound "
              f"{min(gbps):.0f}-{max(gbps):.0f} GB/s, "
              f"{statistics.median(w for w, _ in runs):.0f} us a token (wall); us, medians")  # fmt: skip
        table([r for _, r in runs], args.new)
        del engine


if __name__ == "__main__":
    main()
