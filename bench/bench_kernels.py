"""Attention kernels and the engine on CUDA, against the bounds their bytes and FLOPs give.

device    the device's copy bandwidth (a large ``copy_``) and bf16 matrix throughput (a large
          ``mm``), measured once: every fraction below is against these
decode    flash-decoding over the paged pool vs the fewest bytes it must read (all K and V of
          every request, the queries, the outputs and the slot table), and vs
          ``scaled_dot_product_attention`` over KV gathered from the pool (gather timed in, and
          SDPA alone on pre-gathered KV)
extend    causal extend attention vs the device's matrix throughput at its FLOPs
engine    a Llama-3-8B-shaped model (random weights, bf16): 1,000 requests with input and
          output lengths drawn from 100-1,000 tokens, ``ignore_eos``, output tokens/s; and the
          decode step at batch 1 against weight bytes / bandwidth

Times are medians of many runs after warm-up, with CUDA events. ``--smoke`` runs tiny shapes
(on the CPU under ``TRITON_INTERPRET=1``) to check the script itself; its numbers mean nothing.

python bench/bench_kernels.py [--part all|device|decode|extend|engine] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from plait.kernels.triton_decode import alloc_decode_buffers, choose_num_splits, decode_attention
from plait.kernels.triton_extend import extend_attention

CONFIG_8B = Path(__file__).parent / "configs" / "llama-3-8b"


def timed(fn: Callable[[], object], device: torch.device, runs: int = 50, warmup: int = 5) -> float:
    """Median seconds of ``fn`` over ``runs`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---- device peaks ---------------------------------------------------------------------------


def device_peaks(device: torch.device, smoke: bool) -> tuple[float, float]:
    """(copy bytes/s counting read + write, bf16 matmul FLOP/s)."""
    n = (1 << 20) if smoke else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bw = 2 * n / timed(lambda: dst.copy_(src), device, runs=5 if smoke else 20)
    m = 256 if smoke else 8192
    dtype = torch.float32 if smoke else torch.bfloat16
    a = torch.randn(m, m, dtype=dtype, device=device)
    b = torch.randn(m, m, dtype=dtype, device=device)
    flops = 2 * m**3 / timed(lambda: a @ b, device, runs=3 if smoke else 20)
    return bw, flops


# ---- a paged pool with scattered slots ------------------------------------------------------


def make_pool(seq_lens: list[int], hkv: int, d: int, dtype: torch.dtype, device: torch.device):
    """K/V pools whose slots for each request are a random permutation (no contiguity to
    exploit), and the request-to-token table."""
    total = sum(seq_lens)
    slots = torch.randperm(total, device=device) + 1  # slot 0 stays the dummy
    k_buf = torch.randn(total + 1, hkv, d, dtype=dtype, device=device)
    v_buf = torch.randn(total + 1, hkv, d, dtype=dtype, device=device)
    table = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int64, device=device)
    off = 0
    for i, s in enumerate(seq_lens):
        table[i, :s] = slots[off : off + s]
        off += s
    return k_buf, v_buf, table


def bench_decode(device: torch.device, bw: float, smoke: bool) -> None:
    hq, hkv, d = (8, 2, 64) if smoke else (32, 8, 128)
    dtype = torch.float32 if smoke else torch.bfloat16
    shapes = [(2, 64), (4, 32)] if smoke else [(1, 8192), (8, 4096), (32, 2048), (128, 1024)]
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if not smoke else 4
    print(
        f"{'batch':>5s} {'seq':>6s} {'triton ms':>9s} {'GB/s':>7s} {'% bw':>6s} "
        f"{'gather+SDPA ms':>14s} {'SDPA ms':>8s} {'vs gather+SDPA':>14s}"
    )
    for b, s in tqdm(shapes, desc="decode", leave=False):
        _decode_case(b, s, hq, hkv, d, dtype, device, num_sms, bw, smoke)


def _decode_case(
    b: int,
    s: int,
    hq: int,
    hkv: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    num_sms: int,
    bw: float,
    smoke: bool,
) -> None:
    k_buf, v_buf, table = make_pool([s] * b, hkv, d, dtype, device)
    q = torch.randn(b, hq, d, dtype=dtype, device=device)
    out = torch.empty_like(q)
    rows = torch.arange(b, device=device)
    seq = torch.full((b,), s, dtype=torch.int64, device=device)
    bufs = alloc_decode_buffers(b, hq, d, choose_num_splits(s, b, hkv, num_sms), device)
    scale = d**-0.5

    def triton_run() -> None:
        decode_attention(q, k_buf, v_buf, out, table, rows, seq, bufs, scale)

    def gathered() -> tuple[torch.Tensor, torch.Tensor]:
        idx = table[rows].view(-1)
        keys = k_buf.index_select(0, idx).view(b, s, hkv, d).transpose(1, 2)
        values = v_buf.index_select(0, idx).view(b, s, hkv, d).transpose(1, 2)
        return keys, values

    q4 = q.view(b, hq, 1, d)

    def sdpa(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q4, keys, values, scale=scale, enable_gqa=True)

    runs = 3 if smoke else 100
    t_triton = timed(triton_run, device, runs=runs)
    t_gather_sdpa = timed(lambda: sdpa(*gathered()), device, runs=runs)
    keys, values = (x.contiguous() for x in gathered())
    t_sdpa = timed(lambda: sdpa(keys, values), device, runs=runs)
    elem = q.element_size()
    fewest = b * s * hkv * d * 2 * elem + 2 * b * hq * d * elem + b * s * table.element_size()
    got = fewest / t_triton
    tqdm.write(
        f"{b:5d} {s:6d} {t_triton * 1e3:9.3f} {got / 1e9:7.0f} {got / bw:6.1%} "
        f"{t_gather_sdpa * 1e3:14.3f} {t_sdpa * 1e3:8.3f} {t_gather_sdpa / t_triton:13.2f}x"
    )


def bench_extend(device: torch.device, flops_peak: float, smoke: bool) -> None:
    hq, hkv, d = (8, 2, 64) if smoke else (32, 8, 128)
    dtype = torch.float32 if smoke else torch.bfloat16
    # (batch, prefix, extend)
    shapes = (
        [(2, 16, 32)] if smoke else [(1, 0, 4096), (4, 0, 2048), (8, 1024, 512), (16, 2048, 256)]
    )
    print(f"{'batch':>5s} {'prefix':>6s} {'extend':>6s} {'ms':>8s} {'TFLOP/s':>8s} {'% peak':>7s}")
    for b, pre, ext in tqdm(shapes, desc="extend", leave=False):
        _extend_case(b, pre, ext, hq, hkv, d, dtype, device, flops_peak, smoke)


def _extend_case(
    b: int,
    pre: int,
    ext: int,
    hq: int,
    hkv: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    flops_peak: float,
    smoke: bool,
) -> None:
    k_buf, v_buf, table = make_pool([pre + ext] * b, hkv, d, dtype, device)
    q = torch.randn(b * ext, hq, d, dtype=dtype, device=device)
    out = torch.empty_like(q)
    rows = torch.arange(b, device=device)
    prefix = torch.full((b,), pre, dtype=torch.int64, device=device)
    extend = torch.full((b,), ext, dtype=torch.int64, device=device)
    starts = torch.arange(0, b * ext, ext, dtype=torch.int64, device=device)

    def run() -> None:
        extend_attention(q, k_buf, v_buf, out, table, rows, prefix, extend, starts, ext, d**-0.5)

    t = timed(run, device, runs=3 if smoke else 50)
    # QK^T and PV over the causal region: query j of the new part sees pre + j + 1 keys
    keys_seen = b * (ext * pre + ext * (ext + 1) / 2)
    flops = 4 * keys_seen * hq * d
    tqdm.write(
        f"{b:5d} {pre:6d} {ext:6d} {t * 1e3:8.3f} {flops / t / 1e12:8.1f} "
        f"{flops / t / flops_peak:7.1%}"
    )


# ---- the engine -----------------------------------------------------------------------------


def bench_engine(device: torch.device, bw: float, requests: int) -> None:
    from plait.runtime import Engine

    engine = Engine(
        str(CONFIG_8B),
        load_format="dummy",
        dtype="bfloat16",
        device=str(device),
        mem_fraction_static=0.85,
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.core.loaded.model.parameters())
    vocab = engine.vocab_size
    rng = random.Random(0)

    # decode step at batch 1: 64 tokens after a short prompt, step = (t(64) - t(1)) / 63
    def one(n: int) -> float:
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        engine.generate(
            input_ids=[rng.randrange(vocab) for _ in range(32)],
            sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True},
        )
        torch.cuda.synchronize(device)
        return time.perf_counter() - t

    one(8)
    step = (
        statistics.median(one(65) for _ in range(3)) - statistics.median(one(1) for _ in range(3))
    ) / 64
    bound = weight_bytes / bw
    print(
        f"decode step at batch 1: {step * 1e3:.2f} ms; weights {weight_bytes / 1e9:.2f} GB / "
        f"{bw / 1e9:.0f} GB/s = {bound * 1e3:.2f} ms bound -> {bound / step:.1%} of bound"
    )

    inputs = [
        [rng.randrange(vocab) for _ in range(rng.randint(100, 1000))] for _ in range(requests)
    ]
    params = [
        {"max_new_tokens": rng.randint(100, 1000), "temperature": 0, "ignore_eos": True}
        for _ in range(requests)
    ]
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    outs = engine.generate(input_ids=inputs, sampling_params=params)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t
    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    in_tokens = sum(len(x) for x in inputs)
    print(
        f"offline: {requests} requests, {in_tokens} input + {out_tokens} output tokens in "
        f"{elapsed:.1f} s = {out_tokens / elapsed:.0f} output tok/s "
        f"({(in_tokens + out_tokens) / elapsed:.0f} total tok/s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--part", default="all", choices=["all", "device", "decode", "extend", "engine"]
    )
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; checks the script only")
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(device)
    print(f"# {name}, torch {torch.__version__}")
    torch.manual_seed(0)
    bw, flops = device_peaks(device, args.smoke)
    print(f"device: copy {bw / 1e9:.0f} GB/s (read + write), matmul {flops / 1e12:.0f} TFLOP/s")
    if args.part in ("all", "decode"):
        bench_decode(device, bw, args.smoke)
    if args.part in ("all", "extend"):
        bench_extend(device, flops, args.smoke)
    if args.part in ("all", "engine") and not args.smoke:
        bench_engine(device, bw, args.requests)


if __name__ == "__main__":
    main()
