"""A bfloat16 single stream's decode, in process: the step as this CPU builds it (AMX tiles where
AMX is granted) against builds without AMX, whose one-row products run by the AVX512_BF16 dot
kernel, at one-row read-aheads (``DOT_ROW_AHEAD`` bytes, ``DOT_ROW_HINT`` cache level).

One ``Engine``; its ``FusedDecode`` switches builds between runs (the tables are rebuilt where
AMX support differs), the order reversed every repeat. Prints ms a token (min, median) and
whether each build's greedy text equals the first's.

    python bench/bench_bf16_row_kernels.py --builds 0:3,4096:2,8192:2,4096:1 [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tqdm import tqdm

from plait.kernels import cpu_decode
from plait.runtime.engine import Engine

NO_AMX = ["-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--builds", default="4096:2", help="AHEAD:HINT of each build without AMX (0: none)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new", type=int, default=200)
    args = ap.parse_args()
    cc = cpu_decode._compiler()
    if cc is None or cpu_decode.library() is None:
        raise SystemExit(f"no C step: {cpu_decode.build_error()}")
    libs = {"this CPU's build": cpu_decode.library()}
    base = [f for f in cpu_decode.FLAGS if not f.startswith("-DDOT_ROW_")]
    for spec in args.builds.split(","):
        ahead, _, hint = spec.partition(":")
        defines = [f"-DDOT_ROW_AHEAD={ahead}", f"-DDOT_ROW_HINT={hint or 2}"]
        libs[f"no AMX, {ahead} B ahead, hint {hint or 2}"] = cpu_decode._load(
            cc, base + NO_AMX + defines
        )
    engine = Engine(None, max_total_tokens=8192, dtype="bfloat16")
    fused = engine.core.runner.fused
    if fused is None:
        raise SystemExit("no fused decode step for this model and host")
    params = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    names = list(libs)
    times: dict[str, list[float]] = {n: [] for n in names}
    texts: dict[str, set[str]] = {n: set() for n in names}
    for rep in tqdm(range(args.repeats), desc="repeats"):
        for name in names if rep % 2 == 0 else names[::-1]:
            fused.lib = libs[name]
            engine.generate("warm", {"max_new_tokens": 4, "temperature": 0})
            engine.flush_cache()
            start = time.perf_counter()
            out = engine.generate("Story 1: Once upon a time, in a small village,", params)
            times[name].append((time.perf_counter() - start) / args.new * 1e3)
            texts[name].add(out["text"])
    print("| build | AMX | ms a token (min, median) | same text as the first |")
    print("| --- | --- | --- | --- |")
    for name in names:
        t = times[name]
        print(
            f"| {name} | {bool(libs[name].plait_amx_granted())} | {min(t):.3f}, "
            f"{statistics.median(t):.3f} | {texts[name] == texts[names[0]]} |"
        )


if __name__ == "__main__":
    main()
