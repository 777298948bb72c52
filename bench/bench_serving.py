"""Online serving and the process boundary, on the default model through plait.Runtime.

serving   requests arrive as a Poisson process at several rates, with a mix of prompt and
          output lengths (one in eight prompts is long); time to first token (TTFT) and time
          per output token (TPOT) at p50 / p99 and throughput, with chunked prefill (decodes
          mixed into the chunks' forwards, Sarathi), chunked prefill without mixing, and none
boundary  the same offline batch through Runtime (worker process over ZMQ) vs the in-process
          Engine

python bench/bench_serving.py [--part all|serving|boundary] [--rates 0.5,1,2] [--requests 32]
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import torch
from tqdm import tqdm

from plait.bench.workloads import distinct_prompts
from plait.runtime import Engine, Runtime, SamplingParams


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def make_load(rt: Runtime, n: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    short = distinct_prompts(n, words=40, seed=seed)
    long = distinct_prompts(n, words=700, seed=seed + 1)
    load = []
    for i in range(n):
        text = long[i] if i % 8 == 3 else short[i]
        load.append((rt.encode(text), rng.choice([16, 32, 48])))
    return load


def serve(
    rt: Runtime, load: list[tuple[list[int], int]], rate: float, seed: int
) -> dict[str, float]:
    rng = random.Random(seed)
    ttft: list[float] = []
    tpot: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(ids: list[int], max_new: int) -> None:
        t0 = time.perf_counter()
        params = SamplingParams(max_new_tokens=max_new, temperature=0, ignore_eos=True)
        first = last = None
        n = 0
        for chunk in rt.submit(ids, params, stream=True):
            now = time.perf_counter()
            if first is None and chunk.output_ids:
                first = now
            last = now
            n = len(chunk.output_ids)
        with lock:
            ttft.append(first - t0)
            if n > 1:
                tpot.append((last - first) / (n - 1))
            tokens[0] += n

    threads = []
    start = time.perf_counter()
    for ids, max_new in load:
        time.sleep(rng.expovariate(rate))
        th = threading.Thread(target=one, args=(ids, max_new))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    return {
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "tpot_p50": percentile(tpot, 50) * 1e3,
        "tpot_p99": percentile(tpot, 99) * 1e3,
        "tok_s": tokens[0] / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["all", "serving", "boundary"])
    ap.add_argument("--rates", default="0.5,1,2")
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")

    if args.part in ("all", "serving"):
        print(
            f"{'prefill':16s} {'rate/s':>6s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
            f"{'TPOT p50 ms':>11s} {'TPOT p99 ms':>11s} {'tok/s':>7s}"
        )
        rates = [float(r) for r in args.rates.split(",")]
        configs = {
            "chunk256+mixed": {"chunked_prefill_size": 256, "enable_mixed_chunk": True},
            "chunk256": {"chunked_prefill_size": 256, "enable_mixed_chunk": False},
            "unchunked": {"chunked_prefill_size": None},
        }
        results = {}
        for name, opts in configs.items():
            with Runtime(max_total_tokens=65536, max_prefill_tokens=8192, **opts) as rt:
                load = make_load(rt, args.requests, seed=0)
                rt.generate("warm up", {"max_new_tokens": 4})
                for rate in tqdm(rates, desc=name, leave=False):
                    rt.flush_cache()
                    r = serve(rt, load, rate, seed=1)
                    results[(name, rate)] = r
                    tqdm.write(
                        f"{name:16s} {rate:6.2f} {r['ttft_p50']:8.2f}s {r['ttft_p99']:8.2f}s "
                        f"{r['tpot_p50']:11.1f} {r['tpot_p99']:11.1f} {r['tok_s']:7.1f}"
                    )
        for rate in rates:
            off = results[("unchunked", rate)]["tpot_p99"]
            ratios = ", ".join(
                f"{name} {results[(name, rate)]['tpot_p99'] / off:.2f}" for name in configs
            )
            print(f"  rate {rate}: p99 TPOT / unchunked: {ratios}")

    if args.part in ("all", "boundary"):
        prompts = distinct_prompts(32, words=60, seed=3)
        params = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}
        engine = Engine(None, max_total_tokens=32768, disable_radix_cache=True)
        times = {"engine": [], "runtime": []}
        with Runtime(max_total_tokens=32768, disable_radix_cache=True) as rt:
            for _ in tqdm(range(3), desc="boundary", leave=False):
                t = time.perf_counter()
                engine.generate(prompts, params)
                times["engine"].append(time.perf_counter() - t)
                t = time.perf_counter()
                rt.generate(prompts, params)
                times["runtime"].append(time.perf_counter() - t)
        e, r = sorted(times["engine"])[1], sorted(times["runtime"])[1]
        print(
            f"boundary: 32 prompts x 32 tokens: Engine {e:.2f} s, Runtime {r:.2f} s (medians of 3) "
            f"-> Runtime is {r / e - 1:+.1%} vs in-process"
        )


if __name__ == "__main__":
    main()
