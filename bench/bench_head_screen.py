"""The head's int8 screen on against off, side by side in one process (``head_screen``).

One in-process ``Engine`` per dtype; its greedy runs alternate the screen on and off
(``FusedDecode.head_screen``), the order swapped every repeat: a single stream (``--new``
tokens) and a batch of 32 distinct prompts x 64 tokens. Prints ms a token (single) and seconds
(batch), min and median, the ratio off / on of the medians, whether both gave the same text,
and how many logits a screened row computed exactly (the candidates of its maximum).

    python bench/bench_head_screen.py [--dtypes float32,bfloat16] [--repeats 6] [--new 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from tqdm import tqdm

from plait.bench.workloads import distinct_prompts
from plait.runtime.engine import Engine


class CandidateCount:
    """Wraps ``FusedDecode._run`` (which ``forward`` and ``forward_argmax`` both call): the
    finite logits of each screened row."""

    def __init__(self, fused: Any) -> None:
        self.fused, self.run = fused, fused._run
        self.counts: list[int] = []
        fused._run = self

    def __call__(self, batch: Any, threads: int, sample_index: Any, argmax_only: bool):
        logits, ids = self.run(batch, threads, sample_index, argmax_only)
        if argmax_only and self.fused.head_screen:
            self.counts += torch.isfinite(logits).sum(-1).tolist()
        return logits, ids


def stat(xs: list[float], scale: float) -> str:
    return f"{min(xs) * scale:8.2f} {statistics.median(xs) * scale:8.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--new", type=int, default=200)
    args = ap.parse_args()
    single = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    batched = {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}
    print("| dtype | workload | screen on (min, median) | off | off / on | same text |")
    print("| --- | --- | --- | --- | --- | --- |")
    for dtype in args.dtypes.split(","):
        engine = Engine(None, max_total_tokens=32768, dtype=dtype)
        fused = engine.core.runner.fused
        if fused is None or fused.screen is None:
            print(f"| {dtype} | no screen on this host or model | | | | |")
            continue
        counter = CandidateCount(fused)
        engine.generate("Once upon a time", {"max_new_tokens": 4, "temperature": 0})
        times: dict[tuple[str, bool], list[float]] = {}
        texts: dict[tuple[str, int, bool], Any] = {}
        for rep in tqdm(range(args.repeats), desc=dtype, leave=False):
            for on in (True, False) if rep % 2 == 0 else (False, True):
                fused.head_screen = on
                for workload in ("single", "batch"):
                    if workload == "single":
                        prompt: Any = f"Story {rep}: Once upon a time, in a small village,"
                        params, per = single, args.new
                    else:
                        prompt, params, per = distinct_prompts(32, seed=100 + rep), batched, 1
                    engine.flush_cache()
                    start = time.perf_counter()
                    out = engine.generate(prompt, params)
                    times.setdefault((workload, on), []).append((time.perf_counter() - start) / per)
                    texts[(workload, rep, on)] = (
                        [o["text"] for o in out] if isinstance(out, list) else out["text"]
                    )
        for workload, scale, unit in (("single", 1e3, "ms/token"), ("batch", 1.0, "s")):
            on, off = times[(workload, True)], times[(workload, False)]
            same = all(
                texts[(workload, r, True)] == texts[(workload, r, False)]
                for r in range(args.repeats)
            )
            print(
                f"| {dtype} | {workload} ({unit}) | {stat(on, scale)} | {stat(off, scale)} | "
                f"{statistics.median(off) / statistics.median(on):.3f}x | {same} |"
            )
        c = sorted(counter.counts)
        print(
            f"| {dtype} | exact logits a screened row | median {statistics.median(c):.0f}, "
            f"99th {c[int(0.99 * (len(c) - 1))]}, max {c[-1]} of {engine.vocab_size} | | | |"
        )
        del engine


if __name__ == "__main__":
    main()
