"""The fused step's C products against torch's, one SmolLM2-135M forward's 121 products at M rows.

Each side runs in its own subprocess: two thread pools in one process (torch's OpenMP workers
spin after each op) would slow whichever runs second. Prints ms per forward's products, GFLOP/s
and the ratio, for float32, bfloat16 and int8 weights (``[out, in]``, as the fused step holds
them; int8 (per 32-element block) against torch's weight-only ``_weight_int8pack_mm``, which
has one scale per row: torch has no kernel for int8 blocks).

    python bench/bench_fused_products.py --rows 1,2,4,8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SHAPES = [  # (in, out, count) of SmolLM2-135M: q/k/v, o, gate/up, down per layer; the head
    (576, 960, 30),
    (576, 576, 30),
    (576, 3072, 30),
    (1536, 576, 30),
    (576, 49152, 1),
]
PARAMS = sum(i * o * n for i, o, n in SHAPES)


def _side(which: str, dtype: str, rows: list[int], threads: int, repeats: int) -> dict[int, float]:
    import torch

    from plait.kernels import cpu_decode

    torch.set_num_threads(threads if which == "torch" else 1)
    lib = cpu_decode.library()
    dt = getattr(torch, dtype)
    code = {torch.float32: cpu_decode.DT_F32, torch.bfloat16: cpu_decode.DT_BF16}.get(
        dt, cpu_decode.DT_I8
    )

    def weight(o: int, i: int) -> torch.Tensor:
        if dt == torch.int8:  # int8 codes, as Int8Linear holds them
            return torch.randint(-127, 128, (o, i), dtype=torch.int8)
        return torch.randn(o, i).to(dt)

    weights = [[weight(o, i) for _ in range(n)] for i, o, n in SHAPES]
    # int8's scales: per 32-element block for plait, per row for torch's kernel
    scales = {(o, i): torch.rand(o, i // 32) * 0.01 for i, o, _ in SHAPES}
    row_scales = {o: torch.rand(o).bfloat16() for _, o, _ in SHAPES}
    out = {}
    for m in rows:
        xs = [torch.randn(m, i) for i, _, _ in SHAPES]
        ys = [torch.empty(m, o) for _, o, _ in SHAPES]

        def run(xs=xs, ys=ys, m=m) -> None:
            for (i, o, _), ws, x, y in zip(SHAPES, weights, xs, ys):
                if which == "torch" and dt == torch.int8:  # torch's weight-only int8 kernel
                    xt, sc = x.bfloat16(), row_scales[o]
                    for w in ws:
                        torch.ops.aten._weight_int8pack_mm(xt, w, sc)
                elif which == "torch":
                    xt = x.to(dt)
                    for w in ws:
                        torch.nn.functional.linear(xt, w)
                else:
                    for w in ws:
                        sc = scales[o, i] if dt == torch.int8 else None
                        cpu_decode.gemv(lib, code, w, x, y, scale=sc, threads=threads)

        run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        out[m] = (time.perf_counter() - start) / repeats
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.side:
        which, dtype = args.side.split(":")
        res = _side(which, dtype, rows, args.threads, args.repeats)
        print(json.dumps({str(k): v for k, v in res.items()}))
        return
    print(f"{PARAMS / 1e6:.1f} M weights per forward, {args.threads} threads")
    print("| weights | rows | C (fused step) | torch | C / torch speed |")
    print("| --- | --- | --- | --- | --- |")
    for dtype in args.dtypes.split(","):
        res = {}
        for which in ("c", "torch"):
            cmd = [sys.executable, __file__, "--side", f"{which}:{dtype}", "--rows", args.rows]
            cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[which] = {int(k): v for k, v in json.loads(line.strip().splitlines()[-1]).items()}
        for m in rows:
            c, t = res["c"][m], res["torch"][m]
            gf = 2 * m * PARAMS / 1e9
            print(
                f"| {dtype} | {m} | {c * 1e3:.1f} ms ({gf / c:.0f} GFLOP/s) | "
                f"{t * 1e3:.1f} ms ({gf / t:.0f} GFLOP/s) | {t / c:.2f}x |"
            )


if __name__ == "__main__":
    main()
