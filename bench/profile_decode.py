"""Where a single-stream decode step's time goes: torch.profiler over ``--new`` greedy steps.

    python bench/profile_decode.py [--variant float32|bfloat16|int8|int4] [--new 16] [--rows 15]

Prints the top ops by self CPU time and their share, and the number of ops per step.
"""

from __future__ import annotations

import argparse
import os

from torch.profiler import ProfilerActivity, profile

from plait.bench.bench_threads import VARIANTS
from plait.runtime.engine import Engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="float32", choices=list(VARIANTS))
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--rows", type=int, default=15)
    args = ap.parse_args()
    engine = Engine(None, max_total_tokens=4096, **VARIANTS[args.variant])
    prompt = "Once upon a time, in a small village,"
    params = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    engine.generate(prompt, {"max_new_tokens": 4, "temperature": 0})  # warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(prompt + " there", params)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    print(
        f"{args.variant}: load {os.getloadavg()[0]:.1f}; {calls / args.new:.0f} aten calls per step"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        print(
            f"{e.key:40s} {e.self_cpu_time_total / total:6.1%}  calls/step {e.count / args.new:.0f}"
        )


if __name__ == "__main__":
    main()
