"""CPU time per token of each process and thread of a served single stream.

Starts ``plait serve`` (a ``bench_vs_llamacpp`` plait system), streams ``--new`` greedy tokens
``--repeats`` times with that bench's client, and prints per token the CPU (user + system, from
``/proc/PID/task/TID/stat``) of the server process and each of its threads, the worker process
and each of its threads, and this client. On a 2-core box every millisecond the server and the
client take is taken from one of the worker's two step threads: this is what the served path
costs beside the worker's own step. This host's speed moves up to 2x within minutes, and
every CPU time with it: the server's CPU over the client's (the same code whichever server
runs) compares two servers run minutes apart.

    python bench/bench_served_cpu.py [--system plait-bf16] [--new 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
from pathlib import Path

import httpx

from plait.bench.bench_vs_llamacpp import Server, stream_stamps
from plait.bench.proc_tree import children

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def stream(base: str, new: int) -> list[float]:
    """The chunk arrival times of one streamed completion of ``new`` tokens."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        stamps, _ = await stream_stamps(client, "Story: Once upon a time, in a small village,", new)
    return stamps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="plait-bf16")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--log-dir", default="/tmp/plait-served-cpu")
    args = ap.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with Server(args.system, 2, log_dir, []) as server:
        asyncio.run(stream(server.base, 8))
        pids = {"server": server.proc.pid, "worker": children(server.proc.pid)[0]}
        for rep in range(args.repeats):
            before = {k: thread_cpu(p) for k, p in pids.items()}
            mine = own_cpu()
            stamps = asyncio.run(stream(server.base, args.new))
            mine = own_cpu() - mine
            after = {k: thread_cpu(p) for k, p in pids.items()}
            n = len(stamps) - 1
            wall = (stamps[-1] - stamps[0]) / n
            print(f"{args.system} rep {rep}: {wall * 1e3:.2f} ms a token ({n} tokens)")
            total = {}
            for name in pids:
                per = {t: (after[name][t] - before[name].get(t, 0.0)) / n for t in after[name]}
                total[name] = sum(per.values())
                busy = ", ".join(
                    f"{t}: {c * 1e3:.2f}"
                    for t, c in sorted(per.items(), key=lambda x: -x[1])
                    if c > 0
                )
                print(f"  {name}: {total[name] * 1e3:.2f} ms CPU a token ({busy})")
            print(f"  client: {mine / n * 1e3:.2f} ms CPU a token")
            print(f"  server / client CPU: {total['server'] * n / mine:.2f}")


if __name__ == "__main__":
    main()
