"""The fused step's C products against torch's, one SmolLM2-135M forward's 121 products at M rows.

Each side runs in its own subprocess: two thread pools in one process (torch's OpenMP workers
spin after each op) would slow whichever runs second. Prints ms per forward's products, GFLOP/s
and the ratio, for float32, bfloat16, int8 and int4 weights in the format the fused step reads
(``fused_decode.product_weights``: int8 / int4 repacked where the CPU has the packed kernels,
AVX512_VNNI or AVX2; ``--unpacked`` adds a column of the C products on the formats as they are,
DT_I8 / DT_I4, alternatives of the same process order).
torch's side: ``F.linear``; int8 its weight-only ``_weight_int8pack_mm``, which takes one scale
per row (torch has no kernel for int8 blocks); int4 ``Int4Linear``'s own forward (torch's int4
kernel up to 8 rows, its bfloat16 copy above).

    python bench/bench_fused_products.py --rows 1,2,4,8,16,32,64 --dtypes float32,bfloat16,int8,int4
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
    from plait.runtime.model.fused_decode import product_weights
    from plait.runtime.model.models.linear import Linear
    from plait.runtime.model.models.quant_linear import Int4Linear, Int8Linear

    torch.set_num_threads(threads if which == "torch" else 1)
    lib = cpu_decode.library()
    packed = which == "c" and bool(lib.plait_packed_dot())

    def layer(o: int, i: int) -> torch.nn.Module:
        dense = torch.randn(o, i) * 0.05
        if dtype == "int8":
            return Int8Linear.from_float(dense)
        if dtype == "int4":
            return Int4Linear.from_float(dense)
        lin = Linear(i, o, bias=False, dtype=getattr(torch, dtype))
        lin.set_layout(False)  # [out, in], as the fused step holds it
        lin.weight.data = dense.to(getattr(torch, dtype))
        return lin

    layers = [[layer(o, i) for _ in range(n)] for i, o, n in SHAPES]
    # torch's int8 weight-only kernel takes one scale per row (it has none for blocks)
    row_scales = {o: torch.rand(o).bfloat16() for _, o, _ in SHAPES}
    c_side = [[product_weights(lin, packed) for lin in ls] for ls in layers]
    out = {}
    for m in rows:
        xs = [torch.randn(m, i) for i, _, _ in SHAPES]
        ys = [torch.empty(m, o) for _, o, _ in SHAPES]

        def run(xs=xs, ys=ys) -> None:
            for (_, o, _), ls, ps, x, y in zip(SHAPES, layers, c_side, xs, ys):
                if which in ("c", "c-unpacked"):
                    for p in ps:
                        w, scale, low = p.tensors
                        cpu_decode.gemv(
                            lib, p.dtype, w, x, y, scale=scale, low=low, threads=threads
                        )
                elif dtype == "int8":
                    xt = x.bfloat16()
                    for lin in ls:
                        torch.ops.aten._weight_int8pack_mm(xt, lin.qweight, row_scales[o])
                else:  # the layer's own torch forward (int4: its kernel, or the dense copy)
                    xt = x.to(torch.float32 if dtype == "float32" else torch.bfloat16)
                    for lin in ls:
                        lin(xt)

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
    ap.add_argument(
        "--unpacked", action="store_true", help="int8 / int4: also the C products unpacked"
    )
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.side:
        which, dtype = args.side.split(":")
        res = _side(which, dtype, rows, args.threads, args.repeats)
        print(json.dumps({str(k): v for k, v in res.items()}))
        return
    print(f"{PARAMS / 1e6:.1f} M weights per forward, {args.threads} threads")
    extra = " C unpacked | packed / unpacked speed |" if args.unpacked else ""
    print(f"| weights | rows | C (fused step) | torch | C / torch speed |{extra}")
    print("| --- | --- | --- | --- | --- |" + " --- | --- |" * bool(args.unpacked))
    for dtype in args.dtypes.split(","):
        res = {}
        sides = ["c", "torch"] + ["c-unpacked"] * (args.unpacked and dtype in ("int8", "int4"))
        for which in sides:
            cmd = [sys.executable, __file__, "--side", f"{which}:{dtype}", "--rows", args.rows]
            cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[which] = {int(k): v for k, v in json.loads(line.strip().splitlines()[-1]).items()}
        for m in rows:
            c, t = res["c"][m], res["torch"][m]
            gf = 2 * m * PARAMS / 1e9
            line = (
                f"| {dtype} | {m} | {c * 1e3:.1f} ms ({gf / c:.0f} GFLOP/s) | "
                f"{t * 1e3:.1f} ms ({gf / t:.0f} GFLOP/s) | {t / c:.2f}x |"
            )
            if "c-unpacked" in res:
                u = res["c-unpacked"][m]
                line += f" {u * 1e3:.1f} ms ({gf / u:.0f} GFLOP/s) | {u / c:.2f}x |"
            elif args.unpacked:
                line += " - | - |"
            print(line)


if __name__ == "__main__":
    main()
