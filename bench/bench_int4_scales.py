"""int4 decode with float16 against float32 scales and lows in the fused step (DT_I4PH / DT_I4P).

One in-process engine on the default model (``--quantization int4``, its Q4_1 scales are
float16 values); the fused step's tables are rebuilt in one format or the other before each
greedy request, alternating, so both see the same machine load. Prints the time per token of
whole requests (prefill included: the same in both), min and median over ``--repeats``, the
ratio, and whether the tokens are the same.

    python bench/bench_int4_scales.py [--repeats 8] [--new 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tqdm import tqdm

from plait.kernels import cpu_decode
from plait.runtime.config import EngineConfig
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.core import EngineCore

PROMPT = "Once upon a time, in a small village,"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    lib = cpu_decode.library()
    if lib is None or not lib.plait_packed_dot():
        raise SystemExit("needs the fused step's packed kernels, AVX512_VNNI or AVX2 (DT_I4PH)")
    config = EngineConfig.from_kwargs(
        None, max_total_tokens=4096, dtype="bfloat16", quantization="int4"
    )
    core = EngineCore(config)
    core.own_process()
    fused = core.runner.fused
    assert fused is not None
    ids = core.tokenizer.encode(PROMPT)
    formats = {"float16": True, "float32": False}  # FusedDecode.half_scales
    times: dict[str, list[float]] = {name: [] for name in formats}
    tokens: dict[str, list[int]] = {}
    n = 0

    def run(name: str) -> float:
        nonlocal n
        fused.half_scales = formats[name]
        fused.refresh()
        n += 1
        params = SamplingParams(max_new_tokens=args.new, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        core.add_request(f"r{n}", ids, params)
        out: list[int] = []
        while core.has_work:
            for o in core.step():
                out = out[: o.start] + o.new_ids
        seconds = time.perf_counter() - start
        assert tokens.setdefault(name, out) == out
        return seconds / args.new

    try:
        for name in formats:
            run(name)  # warm
        for _ in tqdm(range(args.repeats), desc="repeats"):
            for name in formats:
                times[name].append(run(name) * 1e6)
    finally:
        fused.half_scales = True
        fused.refresh()
    for name, v in times.items():
        print(f"{name} scales: min {min(v):.0f} us/token, median {statistics.median(v):.0f}")
    f16, f32 = times["float16"], times["float32"]
    print(f"float16 / float32 speed: {min(f32) / min(f16):.3f}x by min, "
          f"{statistics.median(f32) / statistics.median(f16):.3f}x by median")  # fmt: skip
    print(f"same tokens: {tokens['float16'] == tokens['float32']}")


if __name__ == "__main__":
    main()
