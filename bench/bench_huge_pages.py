"""Weights on huge pages against 4 KiB pages, side by side in one process.

Two engines of one variant: the first as the runner builds it (its weights moved onto
transparent huge pages, ``runtime/model/huge_pages.py``), the second with
``huge_pages.available`` patched to False (its weights where the loader put them). Single-stream
greedy decodes alternate between them, the order swapped every round. Prints each engine's
start time and the MiB it placed on huge pages, ms a token (min, median) and the paired
ratios 4 KiB / huge (above 1: huge pages faster).

    python bench/bench_huge_pages.py [--dtype float32] [--quantization int4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tqdm import tqdm

from plait.runtime.engine import Engine
from plait.runtime.model import huge_pages


def build(args: argparse.Namespace) -> tuple[Engine, float]:
    t = time.perf_counter()
    kw = {"quantization": args.quantization} if args.quantization else {}
    engine = Engine(None, dtype=args.dtype, max_total_tokens=4096, **kw)
    return engine, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new", type=int, default=96)
    args = ap.parse_args()
    engines: dict[str, Engine] = {}
    engines["huge"], t_huge = build(args)
    available = huge_pages.available
    huge_pages.available = lambda: False  # the second engine keeps its weights in place
    try:
        engines["4k"], t_4k = build(args)
    finally:
        huge_pages.available = available
    for name, t in (("huge", t_huge), ("4k", t_4k)):
        mib = engines[name].core.runner.huge_page_bytes >> 20
        print(f"{name}: started in {t:.1f} s, {mib} MiB on huge pages")
    params = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    for engine in engines.values():
        engine.generate("Once upon a time", params)
    ms: dict[str, list[float]] = {"huge": [], "4k": []}
    for i in tqdm(range(args.rounds), desc="rounds"):
        order = ["huge", "4k"] if i % 2 == 0 else ["4k", "huge"]
        for name in order:
            t = time.perf_counter()
            engines[name].generate(f"Once upon a time {i}", params)
            ms[name].append((time.perf_counter() - t) / args.new * 1e3)
    variant = args.dtype + (f" {args.quantization}" if args.quantization else "")
    for name, v in ms.items():
        print(f"{variant} {name}: ms a token min {min(v):.2f}, median {statistics.median(v):.2f}")
    paired = " ".join(f"{b / a:.3f}" for a, b in zip(ms["huge"], ms["4k"]))
    print(f"paired 4k / huge: {paired}")


if __name__ == "__main__":
    main()
