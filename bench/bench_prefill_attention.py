"""A long prompt's prefill with the C extend attention on and off, side by side in one process.

For each ``--variants`` precision one in-process ``Engine`` of the default model prefills
prompts of about ``--tokens`` tokens (``bench.workloads.distinct_prompts``: the radix cache
shares no more than their first two tokens between runs), one greedy token each: the time to
the first token, with ``TorchAttentionBackend.c_extend`` on (``plait_extend_attention``:
causal over the pool in place) and off (torch's SDPA over a gathered copy with a mask), the two
alternating run by run;
min and median over ``--repeats``, and the ratio of the medians. Chunked prefill is the engine's
default (1,024 tokens a forward: a longer prompt's later chunks attend over a prefix). A second
table times the kernel alone against SDPA on one layer's shapes (SmolLM2: 9 query heads over 3
KV heads of 64), with the FLOPs of causal attention; a third (``--mixed PREFILL:ROWS``) one
layer of a mixed forward through the backend, decode rows riding in a prefill's chunk, C on and
off.

    python bench/bench_prefill_attention.py [--variants bfloat16,int4] [--tokens 250,1000,4000]
        [--repeats 5] [--mixed 500:30] [--contexts 100,500,2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from plait.bench.bench_machine import best_seconds
from plait.bench.bench_threads import VARIANTS
from plait.bench.workloads import distinct_prompts
from plait.kernels import cpu_decode
from plait.kernels.torch_backend import TorchAttentionBackend
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.engine import Engine
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode


def prompt(seed: int, tokens: int) -> str:
    """A prompt of about ``tokens`` tokens that shares nothing with another seed's past its
    first two (``distinct_prompts``' words are about a token each with SmolLM2's tokenizer)."""
    return distinct_prompts(1, max(tokens, 1), seed)[0]


def engine_runs(variant: str, tokens: list[int], repeats: int) -> None:
    engine = Engine(None, max_total_tokens=max(tokens) * 2 + 512, **VARIANTS[variant])
    attn = engine.core.runner.attn
    params = {"max_new_tokens": 1, "temperature": 0}
    engine.generate(prompt(10_000, 64), params)  # warm up
    print(f"\n{variant}: time to the first token, ms (min / median of {repeats})")
    print("| prompt tokens | C extend attention | SDPA | SDPA / C (medians) |")
    print("| --- | --- | --- | --- |")
    tag = 0
    for n in tokens:
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in tqdm(range(repeats), desc=f"{variant} {n}", leave=False):
            for on in (True, False):
                attn.c_extend = on
                tag += 1
                t = time.perf_counter()
                engine.generate(prompt(tag, n), params)
                times[on].append(time.perf_counter() - t)
        c, s = (statistics.median(times[k]) * 1e3 for k in (True, False))
        print(
            f"| {len(engine.tokenizer.encode(prompt(tag, n)))} | {min(times[True]) * 1e3:.0f}"
            f" / {c:.0f} | {min(times[False]) * 1e3:.0f} / {s:.0f} | {s / c:.2f}x |"
        )
    attn.c_extend = True


def layer_times(lib: object, n: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Seconds of one layer's attention over ``n`` new tokens (no prefix): the C kernel's, and
    SDPA's as the backend calls it (K / V gathered from the pool, queries folded, a mask)."""
    hq, hkv, d, threads = 9, 3, 64, torch.get_num_threads()
    k_buf = torch.randn(n + 1, hkv, d).to(dtype)
    v_buf = torch.randn(n + 1, hkv, d).to(dtype)
    table = torch.arange(n + 1, dtype=torch.int64)[None, 1:].contiguous()
    q = torch.randn(n, hq, d).to(dtype)
    out = torch.empty_like(q)
    rows, prefix, ext = torch.zeros(1), torch.zeros(1), torch.tensor([n])
    pos = torch.arange(n)
    mask = (pos[None, :] <= pos[:, None])[None].expand(hq // hkv, n, n)
    mask = mask.reshape(1, 1, hq // hkv * n, n)
    qf = q.view(n, hkv, hq // hkv, d).permute(1, 2, 0, 3).reshape(1, hkv, -1, d)

    def c() -> None:
        rc = cpu_decode.extend_attention(
            lib, q, k_buf, v_buf, table, rows, prefix, ext, d**-0.5, out, threads
        )
        assert rc == 0, rc

    def sdpa() -> None:
        keys = k_buf.index_select(0, table[0]).transpose(0, 1)[None]
        values = v_buf.index_select(0, table[0]).transpose(0, 1)[None]
        F.scaled_dot_product_attention(qf, keys, values, attn_mask=mask, scale=d**-0.5)

    return best_seconds(c, repeats), best_seconds(sdpa, repeats)


def mixed_layer_times(
    n: int, rows: int, context: int, dtype: torch.dtype, repeats: int
) -> tuple[float, float]:
    """Seconds of one layer's attention in a mixed forward, through ``TorchAttentionBackend``:
    a prefill of ``n`` new tokens (``n`` 0: none) and ``rows`` decode rows of one new token at
    ``context`` positions each (``enable_mixed_chunk``'s batch), the C extend attention on and
    off (SDPA's groups as the backend builds them, metadata included)."""
    hq, hkv, d = 9, 3, 64
    prefix = [context] * rows + ([0] if n else [])
    ext = [1] * rows + ([n] if n else [])
    seq = [p + e for p, e in zip(prefix, ext)]
    pool = TokenToKVPool(sum(seq) + 8, 1, hkv, d, dtype)
    table = torch.zeros(len(seq), max(seq), dtype=torch.int64)
    slots = pool.alloc(sum(seq))
    for i, (start, length) in enumerate(zip([0, *torch.tensor(seq).cumsum(0).tolist()], seq)):
        table[i, :length] = slots[start : start + length]
    k_buf, v_buf = pool.get_kv(0)
    k_buf.copy_(torch.randn(k_buf.shape).to(dtype))
    v_buf.copy_(torch.randn(v_buf.shape).to(dtype))
    tokens = sum(ext)
    new_slots = torch.cat([table[i, p:s] for i, (p, s) in enumerate(zip(prefix, seq))])
    q = torch.randn(tokens, hq, d).to(dtype)
    k, v = torch.randn(tokens, hkv, d).to(dtype), torch.randn(tokens, hkv, d).to(dtype)
    times = []
    for on in (True, False):
        backend = TorchAttentionBackend(hq, hkv, d, c_extend=on)

        def attend(backend: TorchAttentionBackend = backend) -> None:
            batch = ForwardBatch(
                ForwardMode.EXTEND, torch.zeros(tokens, dtype=torch.int64),
                torch.cat([torch.arange(p, s) for p, s in zip(prefix, seq)]), new_slots,
                torch.arange(len(seq)), torch.tensor(seq), prefix, ext, seq, table,
            )  # fmt: skip
            backend.init_forward_metadata(batch)
            backend.forward(q, k, v, 0, pool, batch, d**-0.5)

        times.append(best_seconds(attend, repeats))
    return times[0], times[1]


def c_dtypes() -> list[torch.dtype]:
    """The dtypes ``plait_extend_attention`` is built for here (none: says why)."""
    dtypes = [
        dt
        for dt in (torch.float32, torch.bfloat16)
        if cpu_decode.extend_attention_built(dt == torch.bfloat16)
    ]
    if not dtypes:
        print(f"\nno C extend attention here: {cpu_decode.build_error() or 'not built (AVX-512)'}")
    return dtypes


def mixed_runs(prefill: int, rows: int, contexts: list[int], repeats: int) -> None:
    dtypes = c_dtypes()
    if not dtypes:
        return
    print(f"\none layer of a mixed forward: a {prefill}-token prefill and {rows} decode rows")
    print("(one new token each at the context), through the backend, ms")
    print("| dtype | context | C | SDPA | SDPA / C |")
    print("| --- | --- | --- | --- | --- |")
    for dtype in dtypes:
        for ctx in contexts:
            tc, ts = mixed_layer_times(prefill, rows, ctx, dtype, repeats)
            print(
                f"| {str(dtype).removeprefix('torch.')} | {ctx} | {tc * 1e3:.2f} | "
                f"{ts * 1e3:.2f} | {ts / tc:.2f}x |"
            )


def kernel_runs(tokens: list[int], repeats: int) -> None:
    dtypes = c_dtypes()
    if not dtypes:
        return
    lib = cpu_decode.library()
    print(f"\none layer: 9 query heads over 3 KV heads of 64, {torch.get_num_threads()} threads;")
    print("SDPA as the backend calls it: the KV gathered from the pool, queries folded, a mask")
    print("| dtype | tokens | C, ms (GFLOP/s) | SDPA, ms (GFLOP/s) | SDPA / C |")
    print("| --- | --- | --- | --- | --- |")
    for dtype in dtypes:
        for n in tokens:
            tc, ts = layer_times(lib, n, dtype, repeats)
            flops = 9 * 4 * 64 * n * (n + 1) / 2
            print(
                f"| {str(dtype).removeprefix('torch.')} | {n} | {tc * 1e3:.2f} "
                f"({flops / tc / 1e9:.0f}) | {ts * 1e3:.2f} ({flops / ts / 1e9:.0f}) | "
                f"{ts / tc:.2f}x |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="bfloat16,int4")
    ap.add_argument("--tokens", default="250,1000,4000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mixed", default="500:30", help="PREFILL:ROWS of the mixed table, '' none")
    ap.add_argument("--contexts", default="100,500,2000", help="the mixed table's decode contexts")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    print(f"load {os.getloadavg()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    kernel_runs(tokens, args.repeats)
    if args.mixed:
        prefill, rows = (int(x) for x in args.mixed.split(":"))
        contexts = [int(c) for c in args.contexts.split(",")]
        mixed_runs(prefill, rows, contexts, args.repeats)
    for variant in filter(None, args.variants.split(",")):
        engine_runs(variant, tokens, args.repeats)
    print(f"\nload {os.getloadavg()}")


if __name__ == "__main__":
    main()
