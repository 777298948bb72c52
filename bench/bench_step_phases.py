"""Where a single stream's fused decode step goes, part by part, at several context lengths.

One greedy request of the default model at a time through the in-process ``Engine``, whose fused
step runs a build of ``kernels/cpu_decode.c`` with ``-DPLAIT_PHASE_TIMES`` (``cpu_decode.variant``):
the step's caller thread adds up the wall time of each part (the RMSNorms, the q/k/v product,
RoPE and the KV write, attention, the output product, gate/up, SiLU, down, and the final norm
with the LM head or its screen), its waits for the pool's other threads included. Per token, in
us, with each product's bytes over its time (the weights it reads, in the format the step reads
them, over the part's wall time: a product's dispatch and its tail are in it too). "wall" is
the engine's whole time a token, Python included; "C parts" their sum.

``--contexts`` puts that many words (about a token each) before the prompt, so that attention
reads a longer KV; the prompt is prefilled before the timed run.

  python bench/bench_step_phases.py [--variants int4,bfloat16] [--contexts 0,200,1000]
      [--new 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from typing import Any

from plait.kernels import cpu_decode
from plait.runtime.engine import Engine
from plait.runtime.model.fused_decode import layer_products
from plait.runtime.model.product_weights import product_weights

VARIANTS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
}
PARTS = cpu_decode.STEP_PARTS
PRODUCTS = {"qkv": 0, "o": 1, "gate_up": 2, "down": 3}  # layer_products' order
PROMPT = "Once upon a time, in a small village,"


def nbytes(p: Any) -> int:
    return sum(t.numel() * t.element_size() for t in p.tensors if t is not None)


def step_bytes(engine: Engine) -> dict[str, int]:
    """Bytes a greedy step reads for each product over all layers (layer 0's formats x the
    layers), and for the head: its screen and the screen's bounds where it has one (the few
    candidate rows read exactly left out), else the head."""
    runner = engine.core.runner
    model = runner.model
    packed = bool(cpu_decode.library().plait_packed_dot())
    lins = layer_products(model.model.layers[0])
    per = {name: nbytes(product_weights(lins[i], packed)) for name, i in PRODUCTS.items()}
    out = {name: b * len(model.model.layers) for name, b in per.items()}
    screen = runner.fused.screen
    if screen is not None:
        bounds = screen.err.numel() * 4 + screen.l1.numel() * 4
        out["head"] = nbytes(screen.weights) + bounds
    else:
        out["head"] = nbytes(product_weights(model.lm_head, packed))
    return out


def bench_engine(variant: str, lib: Any) -> Engine:
    """An in-process engine of ``variant`` whose fused step runs the build ``lib``, warmed up."""
    engine = Engine(None, max_total_tokens=8192, **VARIANTS[variant])
    fused = engine.core.runner.fused
    if fused is None:
        raise SystemExit("the fused decode step is not available on this machine")
    fused.lib = lib  # before the first step: the default build's pool never starts
    engine.generate("Hello", {"max_new_tokens": 8, "temperature": 0})  # warm up
    return engine


def run(engine: Engine, lib: Any, prompt: str, new: int) -> tuple[float, list[float]]:
    times = (ctypes.c_double * len(PARTS))()
    params = {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}
    lib.plait_phase_times(times)  # cleared
    t = time.perf_counter()
    engine.generate(prompt, params)
    wall = time.perf_counter() - t
    lib.plait_phase_times(times)
    return wall / new * 1e6, [s / new * 1e6 for s in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="int4,bfloat16")
    ap.add_argument("--contexts", default="0,200,1000")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lib = cpu_decode.variant(["PLAIT_PHASE_TIMES"])
    contexts = [int(c) for c in args.contexts.split(",")]
    print(f"# {args.new} greedy tokens a run, median of {args.repeats}; us per token")
    print("| variant | context | wall | C parts | " + " | ".join(PARTS) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in PARTS) + " |")
    for variant in args.variants.split(","):
        engine = bench_engine(variant, lib)
        gbytes = step_bytes(engine)
        for ctx in contexts:
            prompt = " ".join(["word"] * ctx + [PROMPT])
            engine.generate(prompt, {"max_new_tokens": 1, "temperature": 0})  # its prefix cached
            runs = [run(engine, lib, prompt, args.new) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            parts = [statistics.median(r[1][i] for r in runs) for i in range(len(PARTS))]
            cells = []
            for name, us in zip(PARTS, parts):
                rate = f" ({gbytes[name] / us / 1e3:.1f} GB/s)" if name in gbytes and us else ""
                cells.append(f"{us:.0f}{rate}")
            print(
                f"| {variant} | {ctx} | {wall:.0f} | {sum(parts):.0f} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )
        del engine


if __name__ == "__main__":
    main()
