"""This checkout's ``plait serve`` against another checkout's, side by side (a before / after of
a change, as the user sees it): both servers up together, their runs alternating (one serving
at a time, the order swapped every repeat), the same client and workloads as
``bench_vs_llamacpp.py`` (single stream by default). Prints each repeat, medians, the ratio of
medians this / base and the paired ratios (each repeat's two runs are minutes apart at most;
this host's speed moves 30-50% within minutes), and the read bound beside each single stream.

    git worktree add /tmp/base/plait <commit>      # the base checkout, as package ``plait``
    python bench/bench_served_ab.py --base /tmp/base --systems plait-f32,plait-bf16 --repeats 8

Or one checkout, a server flag on against off (``--base`` left out):

    python bench/bench_served_ab.py --base-flags=--disable-head-screen --systems plait-int4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from contextlib import ExitStack
from pathlib import Path

from plait.bench.bench_machine import ReadBound
from plait.bench.bench_vs_llamacpp import SYSTEMS, Server, add_workload_args, run_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="the other checkout's PYTHONPATH entry (default: this one)")
    ap.add_argument("--base-flags", default="", help="server flags of the base only (one string)")
    ap.add_argument("--systems", default="plait-bf16", help="plait systems of bench_vs_llamacpp")
    ap.add_argument("--workloads", default="single")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-threads", type=int, help="the base server's threads (--threads)")
    add_workload_args(ap, single_new=128)
    ap.add_argument("--log-dir", default="/tmp/plait-served-ab")
    args = ap.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    bound = ReadBound()
    rows = []
    for system in args.systems.split(","):
        if SYSTEMS[system][0] != "plait":
            raise SystemExit(f"--systems: {system} is not a plait system")
        with ExitStack() as stack:
            base_threads = args.base_threads or args.threads
            servers = {
                "this": stack.enter_context(Server(system, args.threads, log_dir, [])),
                "base": stack.enter_context(
                    Server(
                        system,
                        base_threads,
                        log_dir,
                        args.base_flags.split(),
                        pythonpath=args.base,
                        tag="-base",
                    )
                ),
            }
            warm = argparse.Namespace(single_new=8)
            for server in servers.values():
                asyncio.run(run_workload(server.base, "single", -1, warm))
            for w in args.workloads.split(","):
                rates: dict[str, list[float]] = {"this": [], "base": []}
                gbps = []
                for rep in range(args.repeats):
                    order = ["this", "base"] if rep % 2 == 0 else ["base", "this"]
                    gbps.append(bound.measure() / 1e9)
                    for name in order:
                        r = asyncio.run(run_workload(servers[name].base, w, rep, args))
                        rates[name].append(r.rate)
                    print(
                        f"  {system} {w} rep {rep}: this {rates['this'][-1]:.1f}, base "
                        f"{rates['base'][-1]:.1f} tok/s (read {gbps[-1]:.1f} GB/s)",
                        flush=True,
                    )
                rows.append((system, w, rates, gbps))
    print("\n| system | workload | this tok/s | base tok/s | this / base | paired ratios |")
    print("| --- | --- | --- | --- | --- | --- |")
    for system, w, rates, _ in rows:
        this, base = statistics.median(rates["this"]), statistics.median(rates["base"])
        paired = " ".join(f"{a / b:.2f}" for a, b in zip(rates["this"], rates["base"]))
        spread = {k: max(v) / min(v) - 1 for k, v in rates.items()}
        print(
            f"| {system} | {w} | {this:.1f} ({spread['this']:.0%}) | {base:.1f} "
            f"({spread['base']:.0%}) | {this / base:.3f}x | {paired} |"
        )


if __name__ == "__main__":
    main()
