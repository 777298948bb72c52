"""Single-stream decode: per-token time in the fused C step and everything around it.

One greedy request (``--new`` tokens, ``ignore_eos``) of the default model at a time, through
the in-process ``Engine`` and, with ``--worker``, through ``plait.Runtime`` (a worker process).
In-process, timers on the instances split each token's time into

  C          the fused step's C call (``plait_decode_step``)
  forward    the rest of ``ModelRunner.forward``: thread policy, the fused step's address check
             and argument tensors
  sample     ``Scheduler._sample``: sampling info, the sampler, appending the token
  scheduler  the rest of ``EngineCore.step``: scheduling, batch preparation, stop checks,
             output records
  engine     the rest of the ``generate`` call: the engine loop, output chunks, detokenizing
             (in the worker's loop: draining the socket, encoding and sending the records)

(one prefill forward is in every run; it is one step of ``--new``). ``--worker-loop`` runs the
worker's loop (``zmq_worker.Worker``: drain the socket, step, send the records) in this
process, fed by a client socket, as the worker process runs it (``EngineCore.own_process``):
its ``other`` is the loop's time outside the C step. ``--worker`` starts a real worker process;
only the client's wall time per token is seen there. ``--served`` also starts ``plait serve``
(``bench_vs_llamacpp``'s server and single-stream client: httpx, ``/v1/completions``, one token
a chunk by default) and times the stream from its first chunk to its last, as that bench does.

``--compare ROOT`` loads a second plait checkout (ROOT is the directory holding its ``plait``
package, e.g. a ``PYTHONPATH`` entry) in the same process and alternates the two run by run, so
a before / after comparison sees the same machine load; min and median over ``--repeats``.

  python bench/bench_decode_overhead.py [--variants int4,int8,bfloat16] [--new 200]
      [--repeats 5] [--stream] [--worker-loop] [--worker] [--served] [--compare /tmp/pp-base]
      [--contender 7:1] [--context 1000]

``--contender PERIOD:BURST`` runs a process that takes BURST ms of CPU every PERIOD ms beside
every run (``bench/contender.py``): 7:1 is about what ``plait serve`` and its client take beside
a single stream's worker, so the in-process numbers show what that costs a step.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
import zmq

from plait.bench.contender import Contender

VARIANTS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
}
PHASES = ["C", "forward", "sample", "scheduler", "engine"]
PROMPT = "Once upon a time, in a small village,"


def load_tree(root: str | None) -> Any:
    """The ``plait`` package under ``root`` (None: the importable one), imported afresh: a
    tree loaded before keeps running on its own modules."""
    for name in [n for n in sys.modules if n == "plait" or n.startswith("plait.")]:
        del sys.modules[name]
    if root is not None:
        sys.path.insert(0, root)
    try:
        return importlib.import_module("plait")
    finally:
        if root is not None:
            sys.path.remove(root)


class TimedLib:
    """Stands in for the fused step's ctypes library and times its decode calls."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.seconds = 0.0

    def plait_decode_step(self, *args: Any) -> int:
        t = time.perf_counter()
        try:
            return self.lib.plait_decode_step(*args)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lib, name)


@dataclass
class Run:
    tokens: int
    wall: float
    phases: dict[str, float]  # seconds per phase, summing to ``wall``

    def per_token_us(self, phase: str) -> float:
        return self.phases[phase] / self.tokens * 1e6

    @property
    def other_us(self) -> float:
        return (self.wall - self.phases["C"]) / self.tokens * 1e6


def split(wall: float, step: Any, fwd: Any, sample: Any, lib: TimedLib) -> dict[str, float]:
    """Seconds per phase from the timers on ``EngineCore.step``, ``ModelRunner.forward``,
    ``Scheduler._sample`` and the C step."""
    return {
        "C": lib.seconds,
        "forward": fwd.seconds - lib.seconds,
        "sample": sample.seconds,
        "scheduler": step.seconds - fwd.seconds - sample.seconds,
        "engine": wall - step.seconds,
    }


class Phases:
    """Times a ``with`` body by phase: timers on ``EngineCore.step``, ``ModelRunner.forward``
    and ``Scheduler._sample`` (``method_timer``: ``step_timers.MethodTimer``) and the C step's
    (``lib``); ``run`` is the body's ``Run`` of ``tokens`` after it."""

    def __init__(self, method_timer: Any, core: Any, lib: TimedLib, tokens: int) -> None:
        self.timers = [
            method_timer(core, "step"),
            method_timer(core.runner, "forward"),
            method_timer(core.scheduler, "_sample"),
        ]
        self.lib, self.tokens = lib, tokens
        self.run: Run | None = None

    def __enter__(self) -> Phases:
        self.stack = ExitStack()
        for timer in self.timers:
            self.stack.enter_context(timer)
        self.lib.seconds = 0.0
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.start
        self.stack.close()
        self.run = Run(self.tokens, wall, split(wall, *self.timers, self.lib))


class InProcess:
    def __init__(self, plait: Any, variant: str, prompt: str) -> None:
        engine_mod = importlib.import_module("plait.runtime.engine")
        timers = importlib.import_module("plait.bench.step_timers")
        self.engine = engine_mod.Engine(None, max_total_tokens=4096, **VARIANTS[variant])
        self.MethodTimer = timers.MethodTimer
        self.plait, self.prompt = plait, prompt
        core = self.engine.core
        if core.runner.fused is None:
            raise RuntimeError("the fused decode step is not available on this machine")
        self.lib = core.runner.fused.lib = TimedLib(core.runner.fused.lib)
        self.engine.generate(prompt, {"max_new_tokens": 8, "temperature": 0})  # warm up

    def run(self, tag: str, params: dict[str, Any], stream: bool) -> Run:
        timed = Phases(self.MethodTimer, self.engine.core, self.lib, params["max_new_tokens"])
        with timed:
            if stream:
                for _ in self.engine.generate(f"{self.prompt} {tag}", params, stream=True):
                    pass
            else:
                self.engine.generate(f"{self.prompt} {tag}", params)
        assert timed.run is not None
        return timed.run


class WorkerLoop:
    """``Worker.run``'s loop body, driven here until the request's last record is sent."""

    def __init__(self, plait: Any, variant: str, prompt: str) -> None:
        core_mod = importlib.import_module("plait.runtime.worker.core")
        config_mod = importlib.import_module("plait.runtime.config")
        worker_mod = importlib.import_module("plait.runtime.worker.zmq_worker")
        self.MethodTimer = importlib.import_module("plait.bench.step_timers").MethodTimer
        self.messages = importlib.import_module("plait.runtime.messages")
        config = config_mod.EngineConfig.from_kwargs(
            None, max_total_tokens=4096, **VARIANTS[variant]
        )
        # own_process pins torch to one thread for the whole process; this process is not
        # the loop's alone, so every run gives the caller's count back (else the engines
        # built after it here ran their products on one thread)
        self.threads = torch.get_num_threads()
        self.core = core_mod.EngineCore(config)
        if hasattr(self.core, "own_process"):
            self.core.own_process()
        else:  # a checkout from before own_process
            self.core.runner.pin_torch_threads = True
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-worker-")
        endpoint = f"ipc://{self.tmp.name}/worker.sock"
        self.worker = worker_mod.Worker(self.core, endpoint)
        self.client = zmq.Context.instance().socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.connect(endpoint)
        self.ids = self.core.tokenizer.encode(prompt)
        self.lib = self.core.runner.fused.lib = TimedLib(self.core.runner.fused.lib)
        self.run("warm", {"max_new_tokens": 8, "temperature": 0}, False)

    def run(self, tag: str, params: dict[str, Any], stream: bool) -> Run:
        m, w, core = self.messages, self.worker, self.core
        ids = self.ids + self.core.tokenizer.encode(f" {tag}")
        self.client.send(m.encode(m.GenerateReq(f"bench-{tag}", ids, params, stream)))
        while not w.sock.poll(1000):
            pass
        timed = Phases(self.MethodTimer, core, self.lib, params["max_new_tokens"])
        with timed:
            while True:
                w._drain()
                if not core.has_work:
                    break
                w._step()
        while self.client.poll(0):
            self.client.recv()
        torch.set_num_threads(self.threads)
        assert timed.run is not None
        return timed.run

    def close(self) -> None:
        self.client.close(0)
        self.worker.sock.close(0)
        self.tmp.cleanup()


class ThroughWorker:
    def __init__(self, plait: Any, variant: str, root: str | None, prompt: str) -> None:
        self.prompt = prompt
        env = os.environ.get("PYTHONPATH")
        if root is not None:  # the worker process imports the same tree
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *([env] if env else [])])
        try:
            self.runtime = plait.Runtime(None, max_total_tokens=4096, **VARIANTS[variant])
        finally:
            if root is not None and env is None:
                del os.environ["PYTHONPATH"]
            elif root is not None:
                os.environ["PYTHONPATH"] = env
        self.runtime.generate(prompt, {"max_new_tokens": 8, "temperature": 0})

    def run(self, tag: str, params: dict[str, Any], stream: bool, c_seconds: float) -> Run:
        t = time.perf_counter()
        if stream:
            for _ in self.runtime.generate_stream(f"{self.prompt} {tag}", params):
                pass
        else:
            self.runtime.generate(f"{self.prompt} {tag}", params)
        wall = time.perf_counter() - t
        return Run(params["max_new_tokens"], wall, {"C": c_seconds})


SERVED = {
    "float32": "plait-f32",
    "bfloat16": "plait-bf16",
    "int8": "plait-int8",
    "int4": "plait-int4",
}


# the server with uvicorn's pure-Python defaults: asyncio's own loop and h11
PURE_SERVER = (
    "import sys; sys.modules['uvloop'] = sys.modules['httptools'] = None; "
    "from plait.runtime.server.cli import serve; serve()"
)


class Served:
    """``plait serve`` of the variant (``bench_vs_llamacpp.Server``, 2 threads) and its
    single-stream client; only this tree (the server process imports the installed one).
    ``pure``: uvloop and httptools hidden from the server (uvicorn falls back to asyncio / h11)."""

    def __init__(self, variant: str, log_dir: str, pure: bool = False) -> None:
        self.vs = importlib.import_module("plait.bench.bench_vs_llamacpp")
        server = self.vs.Server(SERVED[variant], 2, Path(log_dir), [])
        if pure:
            server.log = Path(log_dir) / "pure.log"
            server.cmd[1:3] = ["-c", PURE_SERVER]  # in place of -m plait.runtime.server
        self.server = server.__enter__()

    def run(self, rep: int, new: int) -> Run:
        async def one() -> Any:
            async with httpx.AsyncClient(base_url=self.server.base, timeout=600) as c:
                return await self.vs.single(c, rep, new)

        r = asyncio.run(one())
        return Run(r.tokens, r.seconds, {"C": 0.0})

    def close(self) -> None:
        self.server.__exit__(None, None, None)


def stat(xs: list[float]) -> str:
    return f"{min(xs):7.0f} {statistics.median(xs):7.0f}"


def summary(label: str, runs: list[Run], worker: list[Run] | None = None) -> str:
    cols = [stat([r.per_token_us(p) for r in runs]) for p in PHASES]
    line = f"{label:28s} " + " ".join(cols) + f"  {stat([r.other_us for r in runs])}"
    if worker:
        line += f"  {stat([r.wall / r.tokens * 1e6 for r in worker])}"
        line += f"  {stat([r.other_us for r in worker])}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="int4,int8,bfloat16")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stream", action="store_true", help="stream=True (chunks, detokenizing)")
    ap.add_argument("--worker-loop", action="store_true", help="also the worker's loop, here")
    ap.add_argument("--worker", action="store_true", help="also through a worker process")
    ap.add_argument("--served", action="store_true", help="also through `plait serve` (HTTP)")
    ap.add_argument(
        "--served-pure", action="store_true", help="and a server without uvloop / httptools"
    )
    ap.add_argument("--compare", default=None, help="a second checkout's PYTHONPATH entry")
    ap.add_argument(
        "--context",
        type=int,
        default=0,
        help="words put before the prompt (about a token each): decode at a longer context, "
        "where attention weighs more (not --served: that runs bench_vs_llamacpp's prompt)",
    )
    ap.add_argument(
        "--contender",
        default=None,
        help="PERIOD:BURST ms of CPU taken beside the runs (7:1 ~ a served single stream's "
        "server and client), or busy",
    )
    args = ap.parse_args()
    with ExitStack() as stack:
        if args.contender:
            print(f"# beside a contender: {stack.enter_context(Contender.parse(args.contender))}")
        run(args)


def run(args: argparse.Namespace) -> None:
    trees: list[tuple[str, str | None]] = [("this", None)]
    if args.compare:
        trees.append((os.path.basename(args.compare.rstrip("/")), args.compare))
    params = {"max_new_tokens": args.new, "temperature": 0, "ignore_eos": True}
    prompt = "word " * args.context + PROMPT
    print(
        f"# {args.new} greedy tokens{' streamed' if args.stream else ''}, {args.repeats} "
        f"repeats; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; us per token, min median"
    )
    head = " ".join(f"{p:>15s}" for p in PHASES)
    tail = f"  {'worker wall':>15s}  {'worker other':>15s}" if args.worker else ""
    print(f"{'variant / tree / path':28s} {head}  {'other':>15s}{tail}")
    for variant in args.variants.split(","):
        engines = []
        for name, root in trees:
            plait = load_tree(root)
            inproc = InProcess(plait, variant, prompt)
            loop = WorkerLoop(plait, variant, prompt) if args.worker_loop else None
            worker = ThroughWorker(plait, variant, root, prompt) if args.worker else None
            engines.append((name, inproc, loop, worker))
        log_dir = tempfile.TemporaryDirectory(prefix="bench-served-")
        served = {}
        if args.served:
            served["served (HTTP)"] = Served(variant, log_dir.name)
        if args.served_pure:
            served["served, asyncio + h11"] = Served(variant, log_dir.name, pure=True)
        sruns: dict[str, list[Run]] = {label: [] for label in served}
        runs: dict[str, list[Run]] = {name: [] for name, *_ in engines}
        lruns: dict[str, list[Run]] = {name: [] for name, *_ in engines}
        wruns: dict[str, list[Run]] = {name: [] for name, *_ in engines}
        for i in range(args.repeats):
            for name, inproc, loop, worker in engines:
                r = inproc.run(f"{name} {i}", params, args.stream)
                runs[name].append(r)
                if loop is not None:
                    lruns[name].append(loop.run(f"{name} {i}", params, args.stream))
                if worker is not None:
                    wruns[name].append(
                        worker.run(f"{name} {i}", params, args.stream, r.phases["C"])
                    )
            for label, server in served.items():
                sruns[label].append(server.run(i, args.new))
        for name, _, loop, worker in engines:
            print(summary(f"{variant} {name} engine", runs[name], wruns[name]))
            if loop is not None:
                print(summary(f"{variant} {name} worker loop", lruns[name]))
                loop.close()
            if worker is not None:
                worker.runtime.shutdown()
        for label, server in served.items():
            per = [r.wall / r.tokens * 1e6 for r in sruns[label]]
            print(f"{variant + ' ' + label:28s} {stat(per)}")
            server.close()
        log_dir.cleanup()
        print(f"# load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
