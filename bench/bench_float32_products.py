"""float32 products, torch (MKL) against OpenBLAS (numpy's BLAS), side by side: every linear
layer of one SmolLM2-135M forward (30 layers' fused q/k/v, o, gate/up and down products and the
LM head; distinct weights, 538 MB, so nothing stays in cache) at M rows, in the layouts
``Linear`` stores. torch at 1 and at ``--threads`` threads; OpenBLAS at ``--threads`` with torch
on one thread (what ``ModelRunner`` does). Prints ms per forward's products, GB/s of weights
read, and the ratio.

    python bench/bench_float32_products.py [--rows 1,2,4,8,32,128,512] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from plait.bench.bench_machine import LAYER_SHAPES, LAYERS, VOCAB
from plait.runtime.model.models import blas
from plait.runtime.model.models.linear import Linear


def _layers() -> list[Linear]:
    shapes = LAYER_SHAPES * LAYERS + [(VOCAB, 576)]
    out = []
    for n_out, n_in in shapes:
        layer = Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.normal_()
        out.append(layer)
    return out


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,2,4,8,32,128,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    openblas = blas.numpy_openblas()
    if openblas is None:
        raise SystemExit("numpy's BLAS is not OpenBLAS")
    layers = _layers()
    nbytes = sum(m.weight.numel() * 4 for m in layers)
    print(f"{len(layers)} products, {nbytes / 1e6:.0f} MB of weights; load {os.getloadavg()}")
    print(
        f"| rows | torch 1 thread | torch {args.threads} | OpenBLAS {args.threads} | vs best torch |"
    )
    print("| --- | --- | --- | --- | --- |")
    for rows in tqdm([int(r) for r in args.rows.split(",")], desc="rows", leave=False):
        xs = {
            n: torch.randn(rows, n)
            for n in {m.weight.shape[0 if m.transposed else 1] for m in layers}
        }

        def forward(xs: dict[int, torch.Tensor] = xs) -> None:
            for m in layers:
                m(xs[m.weight.shape[0 if m.transposed else 1]])

        repeats = max(1, args.repeats * 8 // max(rows, 8))
        times = []
        with torch.inference_mode():
            for threads, on in ((1, False), (args.threads, False), (args.threads, True)):
                for m in layers:
                    m.use_openblas(on)
                torch.set_num_threads(1 if on else threads)
                openblas.set_threads(threads)
                times.append(_time(forward, repeats))
        cells = [f"{t * 1e3:.1f} ms ({nbytes / t / 1e9:.1f} GB/s)" for t in times]
        print(f"| {rows} | " + " | ".join(cells) + f" | {min(times[:2]) / times[2]:.2f}x |")


if __name__ == "__main__":
    main()
