"""Batched workloads in process: the time of prefill (extend) and decode forwards apart.

The served batches of ``bench_vs_llamacpp`` (32 distinct prompts, 8 conversations x 4 turns)
run on an in-process ``Engine``, with a timer on ``ModelRunner.forward`` that books each
forward as ``extend`` (prompts, maybe with running decodes riding along) or ``decode``; the
rest of the wall time is the engine's own. No server, no client: what a change to the
products or the attention does to a batch, without the served path's noise.

``--base ROOT`` runs the same in a second checkout (ROOT holds its ``plait`` package, e.g. a
``git worktree``'s parent), one subprocess per run, the two trees alternating run by run.

    python bench/bench_batch_phases.py [--dtypes float32,bfloat16,int8,int4]
        [--workloads distinct,multiturn]
        [--repeats 2] [--base /tmp/base]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from tqdm import tqdm


def run_once(dtype: str, workload: str, rep: int) -> dict[str, float]:
    """One run of ``workload`` in this process: seconds of wall, extend and decode."""
    from plait.bench.bench_threads import VARIANTS
    from plait.bench.workloads import WORDS, distinct_prompts
    from plait.runtime.engine import Engine

    engine = Engine(None, max_total_tokens=16384, **VARIANTS[dtype])
    runner = engine.core.runner
    booked: dict[str, float] = collections.defaultdict(float)
    forward = runner.forward

    def timed(batch: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = forward(batch, *args, **kwargs)
        booked["decode" if batch.mode.name == "DECODE" else "extend"] += time.perf_counter() - t
        return out

    runner.forward = timed
    engine.generate(distinct_prompts(2, seed=7), {"max_new_tokens": 8, "temperature": 0})
    booked.clear()
    t = time.perf_counter()
    if workload == "distinct":
        params = {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}
        engine.generate(distinct_prompts(32, seed=1000 + rep), params)
    else:  # multiturn: 8 conversations x 4 turns of 32 tokens, each turn's asks batched
        rng = random.Random(rep)
        params = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}
        texts = [f"Conversation {rep}-{i}.\n" for i in range(8)]
        for _ in range(4):
            texts = [
                f"{t}User: tell me about {' '.join(rng.choice(WORDS) for _ in range(40))}"
                "\nAssistant:"
                for t in texts
            ]
            outs = engine.generate(texts, params)
            texts = [t + o["text"] + "\n" for t, o in zip(texts, outs)]
    import plait

    assert os.environ.get("PLAIT_TREE", plait.__file__) == plait.__file__, "not the tree asked"
    return {"wall": time.perf_counter() - t, **booked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--workloads", default="distinct,multiturn")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--base", default=None, help="a second checkout's PYTHONPATH entry")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # dtype,workload,rep
    args = ap.parse_args()
    if args.one:
        dtype, workload, rep = args.one.split(",")
        print(json.dumps(run_once(dtype, workload, int(rep))))
        return
    trees: list[tuple[str, str | None]] = [("this", None)]
    if args.base:
        trees.append(("base", args.base))
    runs = [
        (d, w, r, tree)
        for d in args.dtypes.split(",")
        for w in args.workloads.split(",")
        for r in range(args.repeats)
        for tree in (trees if r % 2 == 0 else trees[::-1])
    ]
    results: dict[tuple[str, str, str], list[dict[str, float]]] = collections.defaultdict(list)
    for dtype, workload, rep, (name, root) in tqdm(runs, desc="runs"):
        env = dict(os.environ)
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            env["PLAIT_TREE"] = os.path.join(os.path.abspath(root), "plait", "__init__.py")
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--one", f"{dtype},{workload},{rep}"],
            env=env, cwd="/", capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[(dtype, workload, name)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| dtype | workload | tree | wall s | extend s | decode s | other s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (dtype, workload, name), rs in results.items():
        cols = []
        for key in ("wall", "extend", "decode"):
            cols.append(" / ".join(f"{r.get(key, 0.0):.2f}" for r in rs))
        other = " / ".join(f"{r['wall'] - r.get('extend', 0) - r.get('decode', 0):.2f}" for r in rs)
        print(f"| {dtype} | {workload} | {name} | {' | '.join(cols)} | {other} |")


if __name__ == "__main__":
    main()
