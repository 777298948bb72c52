"""Offline throughput: plait against transformers `generate`, radix cache on vs off.

Runs every alternative in this one process on the same model and dtype and prints ratios:
  shared-prefix  32 requests sharing a ~400-token few-shot prefix, 64 new tokens each, greedy
  no-prefix      32 requests sharing nothing, 64 new tokens: the radix cache's bookkeeping cost
  single-stream  one request, 128 new tokens: decode tokens/s and the memory-bandwidth bound

  python bench/bench_offline.py [--workload all|shared-prefix|no-prefix|single-stream]
                                [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from plait.bench.workloads import distinct_prompts, shared_prefix_prompts
from plait.runtime import Engine
from plait.runtime.model.model_source import resolve_model_path


def copy_bandwidth(nbytes: int = 512 << 20, reps: int = 10) -> float:
    """Bytes per second a large buffer copy reads (each byte read once, written once)."""
    a = torch.empty(nbytes, dtype=torch.uint8)
    b = torch.empty_like(a)
    for _ in range(2):
        b.copy_(a)
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    return nbytes * reps / (time.perf_counter() - t)


class BookkeepingTimer:
    """Times every radix-cache operation the scheduler makes (match, insert, lock, evict)."""

    METHODS = ("match", "lock", "unlock", "cache_unfinished", "release")

    def __init__(self, engine: Engine) -> None:
        self.kv = engine.core.cache
        self.seconds = 0.0

    def __enter__(self) -> BookkeepingTimer:
        for name in self.METHODS:
            original = getattr(self.kv, name)

            def timed(*a, _f=original, **k):
                t = time.perf_counter()
                try:
                    return _f(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - t

            setattr(self.kv, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.METHODS:
            delattr(self.kv, name)


def run_plait(engine: Engine, prompts: list[str], max_new: int) -> tuple[float, int]:
    params = {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t
    outs = outs if isinstance(outs, list) else [outs]
    return dt, sum(o["meta_info"]["completion_tokens"] for o in outs)


def run_hf(hf, tok, prompts: list[str], max_new: int, batch_size: int) -> tuple[float, int]:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    total = 0
    t = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        enc = tok(
            prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            out = hf.generate(
                **enc,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        total += (out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]
    return time.perf_counter() - t, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--workload", default="all", choices=["all", "shared-prefix", "no-prefix", "single-stream"]
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    path = resolve_model_path(None)
    print(
        f"# {path.name}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )

    kw = dict(
        dtype=args.dtype, max_total_tokens=65536, chunked_prefill_size=2048, max_prefill_tokens=8192
    )
    on = Engine(path, **kw)
    off = Engine(path, disable_radix_cache=True, **kw)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(path)
    on.generate("warm up", {"max_new_tokens": 4})
    off.generate("warm up", {"max_new_tokens": 4})
    rows: list[tuple[str, str, float, int]] = []

    def record(workload: str, system: str, dt: float, n: int) -> float:
        rows.append((workload, system, dt, n))
        tqdm.write(f"{workload:14s} {system:28s} {n:6d} tok {dt:8.2f} s {n / dt:8.2f} tok/s")
        return n / dt

    if args.workload in ("all", "shared-prefix"):
        prompts = shared_prefix_prompts(args.requests)
        n_prefix = len(tok(prompts[0], add_special_tokens=False).input_ids)
        print(f"shared-prefix: {len(prompts)} requests, ~{n_prefix} prompt tokens each, 64 new")
        on.flush_cache()
        steps = tqdm(total=3, desc="shared-prefix", leave=False)
        a = record("shared-prefix", "plait (radix cache)", *run_plait(on, prompts, 64))
        steps.update()
        b = record("shared-prefix", "plait (no radix cache)", *run_plait(off, prompts, 64))
        steps.update()
        c = record(
            "shared-prefix",
            "transformers generate bs=32",
            *run_hf(hf, tok, prompts, 64, len(prompts)),
        )
        steps.update()
        steps.close()
        print(f"  plait / transformers = {a / c:.2f}x   cache on / off = {a / b:.2f}x")

    if args.workload in ("all", "no-prefix"):
        prompts = distinct_prompts(args.requests)
        ratios, on_time = [], 0.0
        with BookkeepingTimer(on) as timer:
            for rep in tqdm(range(5), desc="no-prefix", leave=False):
                on.flush_cache()
                dt_on, n_on = run_plait(on, prompts, 64)
                on_time += dt_on
                a = record("no-prefix", f"plait (radix cache) #{rep}", dt_on, n_on)
                b = record(
                    "no-prefix", f"plait (no radix cache) #{rep}", *run_plait(off, prompts, 64)
                )
                ratios.append(a / b)
        print(
            f"  cache on / off = {', '.join(f'{r:.3f}' for r in ratios)} "
            f"(median {sorted(ratios)[len(ratios) // 2]:.3f}); radix-cache bookkeeping timed "
            f"directly: {timer.seconds:.3f} s = {timer.seconds / on_time:.2%} of the cache-on time"
        )

    if args.workload in ("all", "single-stream"):
        prompt = "Write a long story about a lighthouse keeper and a storm."
        dt_p, n_p = run_plait(off, [prompt], 128)
        a = record("single-stream", "plait", dt_p, n_p)
        dt_h, n_h = run_hf(hf, tok, [prompt], 128, 1)
        c = record("single-stream", "transformers generate", dt_h, n_h)
        weight_bytes = sum(
            p.numel() * p.element_size()
            for n, p in on.loaded.model.named_parameters()
            if "embed_tokens" not in n
        )
        bw = copy_bandwidth()
        bound = weight_bytes / bw
        print(
            f"  plait / transformers = {a / c:.2f}x; weights read per step {weight_bytes / 1e6:.0f} MB, "
            f"copy bandwidth {bw / 1e9:.1f} GB/s -> bound {bound * 1e3:.1f} ms/step; "
            f"plait {dt_p / n_p * 1e3:.1f} ms/token = {bound / (dt_p / n_p):.0%} of the bound"
        )


if __name__ == "__main__":
    main()
