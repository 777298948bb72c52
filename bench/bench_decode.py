"""Single-stream decode speed, side by side: code versions x precisions x thread settings.

Each configuration is one long-lived in-process engine in its own subprocess (its own
``PYTHONPATH``, so a checkout of an older commit runs beside this one); the driver asks them in
turn, round after round, for one greedy single-stream generation of ``--new`` tokens and prints
per configuration the median tok/s, the median model forward, and the ratio to the first
configuration. Alternating rounds keep the ratios meaningful on a shared, loaded box.

    python bench/bench_decode.py --code new=. --variants float32,bfloat16 --threads 1,2a
    python bench/bench_decode.py --code base=/tmp/pp-base,new=/tmp/pp-new --threads 1

``--code NAME=DIR``: DIR is put first on ``PYTHONPATH`` (a folder holding a ``plait`` package or
link; ``.`` = the ``plait`` this script imports). Threads: ``1``, ``2`` (two, fixed at every
forward size) or ``2a`` (up to two, the runner's adaptive policy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def _worker(variant: str, threads: str) -> None:
    import torch

    from plait.bench.bench_threads import VARIANTS
    from plait.runtime.engine import Engine

    engine = Engine(None, max_total_tokens=4096, disable_radix_cache=True, **VARIANTS[variant])
    runner = engine.core.runner
    runner.pin_torch_threads = True  # this subprocess is the engine's own, as a worker's is
    torch.set_num_threads(int(threads.rstrip("a")))
    runner.adaptive_threads = threads.endswith("a")
    forwards: list[float] = []
    forward = runner.forward

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        forwards.append(time.perf_counter() - start)
        return out

    runner.forward = timed
    params = {"temperature": 0, "ignore_eos": True}
    engine.generate(PROMPT, {**params, "max_new_tokens": 8})  # warm up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        new = int(line)
        forwards.clear()
        start = time.perf_counter()
        out = engine.generate(PROMPT, {**params, "max_new_tokens": new})
        seconds = time.perf_counter() - start
        result = {
            "tok_s": new / seconds,
            "forward_ms": statistics.median(forwards[1:]) * 1e3,  # decode steps only
            "ids": out["output_ids"][:16],
        }
        print(json.dumps(result), flush=True)


def _start(code: str, variant: str, threads: str) -> subprocess.Popen:
    import plait

    here = Path(plait.__file__).resolve().parent.parent  # the folder that holds this plait
    path = str(here if code == "." else Path(code).resolve())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
    # this file runs as a script so that an older checkout without it can be measured
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, threads]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert json.loads(proc.stdout.readline())["ready"], f"{code} {variant} {threads} did not start"
    return proc


def _ask(proc: subprocess.Popen, new: int) -> dict:
    proc.stdin.write(f"{new}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return _worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", default="new=.", help="NAME=DIR,... code versions to compare")
    ap.add_argument("--variants", default="float32")
    ap.add_argument("--threads", default="1,2a")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    configs = [
        (name, code, variant, threads)
        for name, code in (c.split("=", 1) for c in args.code.split(","))
        for variant in args.variants.split(",")
        for threads in args.threads.split(",")
    ]
    print(f"load average before: {os.getloadavg()}", flush=True)
    procs = {c: _start(c[1], c[2], c[3]) for c in configs}
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    try:
        for r in range(args.rounds):
            for c in configs:
                results[c].append(_ask(procs[c], args.new))
            line = ", ".join(f"{c[0]}/{c[2]}/{c[3]} {results[c][-1]['tok_s']:.1f}" for c in configs)
            print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): {line} tok/s", flush=True)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    first = statistics.median(x["tok_s"] for x in results[configs[0]])
    print(f"\nload average after: {os.getloadavg()}")
    print("| code | precision | threads | median tok/s | median forward ms | vs first | ids |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ref_ids = results[configs[0]][0]["ids"]
    for c in configs:
        rate = statistics.median(x["tok_s"] for x in results[c])
        fwd = statistics.median(x["forward_ms"] for x in results[c])
        same = "same" if results[c][0]["ids"] == ref_ids else "differ"
        print(
            f"| {c[0]} | {c[2]} | {c[3]} | {rate:.1f} | {fwd:.1f} | {rate / first:.2f}x | {same} |"
        )


if __name__ == "__main__":
    main()
