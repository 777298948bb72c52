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
import ctypes
import statistics
import time
from typing import Any

from plait.bench.bench_machine import ReadBound
from plait.kernels import cpu_decode
from plait.runtime.engine import Engine

VARIANTS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
}
# kernels/cpu_decode.c's PH_* then TRACE_FIRST and TRACE_OTHER
SLOTS = ["norm", "qkv", "rope+kv", "attention", "o", "gate_up", "silu", "down", "head",
         "first", "other"]  # fmt: skip
FIELDS = 7  # phases, total, own, wait, start, busy, joined (seconds summed)
PROMPT = "Once upon a time, in a small village,"


def traced_run(engine: Engine, lib: Any, new: int) -> tuple[float, list[list[float]]]:
    """Wall us a token, and each slot's sums (``plait_claim_trace``) over one request."""
    sums = (ctypes.c_double * (FIELDS * len(SLOTS)))()
    lib.plait_claim_trace(sums)  # cleared
    t = time.perf_counter()
    engine.generate(PROMPT, {"max_new_tokens": new, "temperature": 0, "ignore_eos": True})
    wall = (time.perf_counter() - t) / new * 1e6
    lib.plait_claim_trace(sums)
    return wall, [list(sums[i * FIELDS : (i + 1) * FIELDS]) for i in range(len(SLOTS))]


def per_phase(s: list[float], new: int) -> list[float]:
    """A slot's sums as phases a token, then us per phase (total, own, wait), us per joined
    worker (start, busy) and the share joined."""
    phases, total, own, wait, start, busy, joined = s
    n, j = max(phases, 1.0), max(joined, 1.0)
    return [phases / new, total / n * 1e6, own / n * 1e6, wait / n * 1e6,
            start / j * 1e6, busy / j * 1e6, joined / n]  # fmt: skip


def table(runs: list[list[list[float]]], new: int) -> None:
    print("| part | phases a token | total | own | wait | start | busy | joined |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, name in enumerate(SLOTS):
        if not any(r[i][0] for r in runs):
            continue
        cols = [statistics.median(per_phase(r[i], new)[k] for r in runs) for k in range(7)]
        print(f"| {name} | {cols[0]:.1f} | " + " | ".join(f"{c:.2f}" for c in cols[1:6])
              + f" | {cols[6]:.0%} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="int4,bfloat16")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lib = cpu_decode.variant(["PLAIT_CLAIM_TRACE"])
    lib.plait_claim_trace.restype = None
    lib.plait_claim_trace.argtypes = [ctypes.c_void_p]
    bound = ReadBound()
    for variant in args.variants.split(","):
        engine = Engine(None, max_total_tokens=8192, **VARIANTS[variant])
        fused = engine.core.runner.fused
        if fused is None:
            raise SystemExit("the fused decode step is not available on this machine")
        fused.lib = lib  # before the first step: the default build's pool never starts
        engine.generate("Hello", {"max_new_tokens": 8, "temperature": 0})  # warm up
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
