"""What this machine can do, measured the right way, and the decode bounds that follow.

- read bandwidth: a reduction (``sum``) over a buffer far larger than the caches, so every byte
  is read once and nothing is written (a ``copy_`` reads and writes: its size over its time
  understates the read rate about 2-3x, the error of the bound recorded before issue 15);
- matmul peaks: square GEMMs in float32, bfloat16 and int8 (``torch._int_mm``);
- decode kernels: the matrix-vector products one decode step runs (M = 1), over enough distinct
  weights that nothing stays in cache, as weight bytes streamed per second (and as a share of
  the read bandwidth), for each precision in the fused step's C products (torch's where the C
  library cannot be built);
- the single-stream bound per precision: the weight bytes one SmolLM2-135M decode step must read
  (every linear layer and the LM head once; the embedding lookup excluded) over the read
  bandwidth.

    python bench/bench_machine.py [--threads 2] [--gib 1] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from plait.kernels import cpu_decode
from plait.runtime.model import huge_pages
from plait.runtime.model.fused_decode import product_weights
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.quant_linear import (
    INT4_GROUP,
    INT8_BLOCK,
    Int4Linear,
    Int8Linear,
)

# SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, vocab 49152 (tied head)
HIDDEN, INTER, LAYERS, VOCAB, HEADS_DIM = 576, 1536, 30, 49152, 64
LAYER_SHAPES = [(576 + 2 * 3 * 64, HIDDEN), (HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER)]


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


class ReadBound:
    """The read bandwidth now: the fastest of ``repeats`` sums over one buffer of ``gib``
    GiB, allocated once, so a bench can measure it again and again between its runs. The
    buffer is on huge pages where the model's weights are (``huge_pages``: 2-16% faster reads
    than 4 KiB pages on a Zen 3; before 2026-12-03 the bound was read on 4 KiB pages)."""

    def __init__(self, gib: float = 1.0) -> None:
        buf = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
        self.buf = huge_pages.place([buf])[0] if huge_pages.available() else buf

    def measure(self, repeats: int = 3) -> float:
        return self.buf.numel() * 4 / best_seconds(lambda: self.buf.sum(), repeats)


class StealShare:
    """The share of this VM's CPU time its host gave to others (``steal`` in /proc/stat) between
    ``start`` and ``share``: a slow phase of the host that is the host's neighbours shows here
    (0.0 where /proc/stat has no steal column)."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _ticks() -> tuple[int, int]:
        """(steal, total) jiffies of all CPUs so far."""
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])

    def start(self) -> None:
        self._at = self._ticks()

    def share(self) -> float:
        steal, total = self._ticks()
        return (steal - self._at[0]) / max(total - self._at[1], 1)


def read_bandwidth(gib: float, repeats: int) -> float:
    return ReadBound(gib).measure(repeats)


def copy_bandwidth(gib: float, repeats: int) -> float:
    """The old (wrong) measure, for comparison: a copy's size over its time."""
    n = int(gib * (1 << 30)) // 8
    a, b = torch.ones(n), torch.empty(n)
    return n * 4 / best_seconds(lambda: b.copy_(a), repeats)


def gemm_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    if dtype == torch.int8:
        a = torch.randint(-64, 64, (size, size), dtype=torch.int8)
        b = torch.randint(-64, 64, (size, size), dtype=torch.int8)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        fn = lambda: a @ b  # noqa: E731
    return 2 * size**3 / best_seconds(fn, repeats)


def step_weight_bytes(precision: str, greedy: bool = True) -> int:
    """Bytes of weights one decode step reads, per-block scales and int4's lows included (before
    2026-12-02 int4's lows were left out: its bound was 12% too high). Where the library has
    the packed kernels (AVX512_VNNI or AVX2), int8 scales and int4 scales and lows are float16
    (DT_I8PH, DT_I4PH: the default GGUF's Q8_0 / Q4_1 values, and ``from_float``'s), else
    float32. A ``greedy`` float32 / bfloat16 step reads the head's int8 screen and its two
    bounds a row (``head_screen``; the few candidate rows it then reads exactly are left out)
    where the library has the packed kernels."""
    layer = sum(o * i for o, i in LAYER_SHAPES) * LAYERS
    head = VOCAB * HIDDEN
    lib = cpu_decode.library()
    packed = lib is not None and bool(lib.plait_packed_dot())
    scale = 2 if packed else 4  # bytes a block's scale (and int4's low) takes
    head_int8 = head + scale * (head // INT8_BLOCK)  # the head is int8 in both quantized modes
    screen = head_int8 + 8 * VOCAB if greedy and packed else None
    if precision == "float32":
        return 4 * layer + (4 * head if screen is None else screen)
    if precision == "bfloat16":
        return 2 * layer + (2 * head if screen is None else screen)
    if precision == "int8":
        return layer + scale * (layer // INT8_BLOCK) + head_int8
    if precision == "int4":  # a scale and a low per group
        return layer // 2 + 2 * scale * (layer // INT4_GROUP) + head_int8
    raise ValueError(precision)


def _weights(precision: str, total_bytes: int, threads: int) -> tuple[list[Callable], int]:
    """Distinct copies of the decoder's matrices (about ``total_bytes``) as M = 1 products, in
    the format and kernel a decode step runs: the fused step's C products
    (``fused_decode.product_weights``), or torch's where the C library cannot be built. The C
    products' weights are on huge pages where the model's are (before 2026-12-04 they were
    not: one thread read int8 at 21.7 GB/s from 4 KiB pages, 30.6 from huge pages, Zen 4)."""
    lib = cpu_decode.library()
    packed = lib is not None and bool(lib.plait_packed_dot())
    x32 = torch.randn(1, HIDDEN)
    made: list[tuple] = []  # (product weights, layer, x, y)
    streamed = 0
    while streamed < total_bytes:
        for out_f, in_f in LAYER_SHAPES:
            w = torch.randn(out_f, in_f) * 0.05
            x = torch.randn(1, in_f) if in_f != HIDDEN else x32
            if precision in ("float32", "bfloat16"):
                layer = Linear(in_f, out_f, dtype=getattr(torch, precision))
                layer.set_layout(False)  # [out, in], as the fused step holds it
                layer.weight.data = w.to(getattr(torch, precision))
            else:
                layer = (Int8Linear if precision == "int8" else Int4Linear).from_float(w)
            p = product_weights(layer, packed)
            made.append((p, layer, x, torch.empty(1, out_f)))
            streamed += sum(t.numel() * t.element_size() for t in p.tensors if t is not None)
    if lib is not None and huge_pages.available():
        _on_huge_pages([p for p, *_ in made])
    calls: list[Callable] = []
    for p, layer, x, y in made:
        if lib is not None:
            calls.append(
                lambda p=p, x=x, y=y: cpu_decode.gemv(
                    lib, p.dtype, p.tensors[0], x, y, scale=p.tensors[1], low=p.tensors[2],
                    threads=threads,
                )
            )  # fmt: skip
        elif precision != "int8":  # torch has no int8 block kernel
            xt = x if precision == "float32" else x.bfloat16()
            calls.append(lambda xt=xt, layer=layer: layer(xt))
    return calls, streamed


def _on_huge_pages(products: list) -> None:
    """Moves every product's tensors into one huge-page mapping, in order."""
    placed = iter(huge_pages.place([t for p in products for t in p.tensors if t is not None]))
    for p in products:
        p.tensors = tuple(None if t is None else next(placed) for t in p.tensors)


def gemv_rate(precision: str, total_bytes: int, repeats: int, threads: int) -> float | None:
    calls, streamed = _weights(precision, total_bytes, threads)
    if not calls:
        return None
    return streamed / best_seconds(lambda: [c() for c in calls], repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gib", type=float, default=1.0, help="buffer for the bandwidth test")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gemm", type=int, default=1024, help="square GEMM size")
    ap.add_argument("--gemv-mib", type=int, default=400, help="weights streamed per GEMV pass")
    ap.add_argument("--quick", action="store_true", help="small buffers (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.gib, args.gemm, args.gemv_mib, args.repeats = 0.25, 256, 64, 2
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}, torch {torch.__version__}, threads {args.threads}")
    bw = read_bandwidth(args.gib, args.repeats)
    print(f"read bandwidth (sum over {args.gib} GiB): {bw / 1e9:.1f} GB/s")
    print(
        f"copy size / time (the old measure): {copy_bandwidth(args.gib, args.repeats) / 1e9:.1f} GB/s"
    )
    for dt in (torch.float32, torch.bfloat16, torch.int8):
        peak = gemm_peak(dt, args.gemm, args.repeats)
        print(f"GEMM {args.gemm}^3 {str(dt).removeprefix('torch.')}: {peak / 1e9:.0f} GFLOP/s")
    print(
        f"\nM=1 products by {'the fused step (C)' if cpu_decode.library() else 'torch'}\n"
        "| precision | weights per step | bound (bytes / read bw) | M=1 kernel streams | "
        "kernel-limited step |"
    )
    print("| --- | --- | --- | --- | --- |")
    for precision in ("float32", "bfloat16", "int8", "int4"):
        nbytes = step_weight_bytes(precision)
        rate = gemv_rate(precision, args.gemv_mib << 20, args.repeats, args.threads)
        streams = "n/a" if rate is None else f"{rate / 1e9:.1f} GB/s ({rate / bw:.0%})"
        limited = "n/a" if rate is None else f"{rate / nbytes:.0f} tok/s"
        print(
            f"| {precision} | {nbytes / 1e6:.0f} MB | {nbytes / bw * 1e3:.2f} ms = "
            f"{bw / nbytes:.0f} tok/s | {streams} | {limited} |"
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
