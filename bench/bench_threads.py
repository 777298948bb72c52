"""Torch CPU threads against precision and contention: where bfloat16's cliffs come from.

Runs the same batched greedy decode (``--batch`` distinct prompts, ``--new`` tokens each) on
in-process engines of each precision, alternating 1 thread, 2 fixed threads and 2 threads under the runner's
adaptive policy (``runtime/model/thread_policy.py``), repeat after repeat,
optionally beside a busy-looping ``--contender`` process (what the HTTP server, the client or
another job does to a 2-core box). Prints per precision and thread count the median tok/s and
the repeat spread (max / min - 1), and the load average.

    python bench/bench_threads.py [--variants float32,bfloat16,int4] [--repeats 3] [--contender]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack

import torch

from plait.bench.contender import Contender
from plait.bench.workloads import distinct_prompts
from plait.runtime.engine import Engine

VARIANTS = {
    "float32": {"dtype": "float32"},
    "float32-mkl": {"dtype": "float32", "float32_matmul": "torch"},  # products on torch's MKL
    "float32-unfused": {"dtype": "float32", "decode_kernel": "torch"},  # decode steps in torch
    "bfloat16-unfused": {"dtype": "bfloat16", "decode_kernel": "torch"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
    "int8-unfused": {"dtype": "bfloat16", "quantization": "int8", "decode_kernel": "torch"},
    "int4-unfused": {"dtype": "bfloat16", "quantization": "int4", "decode_kernel": "torch"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="float32,bfloat16,int4")
    ap.add_argument("--threads", default="1,2,2a", help="counts; 'a' = adaptive up to it")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--words", type=int, default=20, help="prompt length in words")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--contender", action="store_true", help="a busy process beside the engine")
    args = ap.parse_args()
    with ExitStack() as stack:
        if args.contender:
            stack.enter_context(Contender.parse("busy"))
        run(args)


def run(args: argparse.Namespace) -> None:
    prompts = distinct_prompts(args.batch, words=args.words)
    params = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    threads = args.threads.split(",")
    rates: dict[tuple[str, str], list[float]] = {}
    print(f"load average {os.getloadavg()}, contender {args.contender}")
    for name in args.variants.split(","):
        engine = Engine(None, max_total_tokens=8192, disable_radix_cache=True, **VARIANTS[name])
        engine.generate(prompts[:2], {"max_new_tokens": 2, "temperature": 0})  # warm up
        for _ in range(args.repeats):
            for n in threads:
                torch.set_num_threads(int(n.rstrip("a")))
                engine.core.runner.adaptive_threads = n.endswith("a")
                t = time.perf_counter()
                engine.generate(prompts, params)
                rate = args.batch * args.new / (time.perf_counter() - t)
                rates.setdefault((name, n), []).append(rate)
                print(f"  {name} threads={n}: {rate:.1f} tok/s (load {os.getloadavg()[0]:.1f})")
        del engine
    print(f"\n| precision | threads | median tok/s | spread | load {os.getloadavg()[0]:.1f} |")
    print("| --- | --- | --- | --- | --- |")
    for (name, n), r in rates.items():
        print(f"| {name} | {n} | {statistics.median(r):.1f} | {max(r) / min(r) - 1:.0%} | |")


if __name__ == "__main__":
    main()
