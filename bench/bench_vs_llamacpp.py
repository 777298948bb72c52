"""plait against llama.cpp's own ``llama-server``, side by side on this machine (issue 15).

One server at a time, the same OpenAI-compatible client (httpx, ``/v1/completions``, greedy,
``ignore_eos`` so every request produces exactly its ``max_tokens``), SmolLM2-135M-Instruct from
the same GGUF. Four workloads:

- ``single``: one stream; decode tok/s measured between its first and last streamed chunk;
- ``shared``: 32 concurrent requests on a shared ~400-token few-shot prefix, 64 new tokens each;
- ``distinct``: 32 concurrent requests sharing nothing (~250 tokens), 64 new tokens each;
- ``multiturn``: 8 concurrent conversations x 4 turns (each turn's prompt is the conversation so
  far), 32 new tokens a turn.
(Flags change these sizes for a smoke run; the defaults are the issue's.) A fifth, not in the
default set: ``prefill``, long prompts one after another (``--prefill-requests`` of about
``--prefill-words`` tokens, one new token each): prompt tokens a second, the server's usage
counting them; and ``longctx``, ``single``'s stream after a prompt of ``--longctx-words``
(decode tok/s with the whole context in every token's attention).

Every repeat uses fresh prompts (a per-repeat header / seed), so neither server answers from a
cache filled by an earlier repeat; within a workload, caching is each server's own business.
Prints medians over ``--repeats``, the repeat spread (max / min - 1), ratios plait / llama.cpp
at the same precision, and single-stream decode as a fraction of the read-bandwidth bound,
each repeat against a bound measured just before it. This host's speed shifts 30-50% within
minutes; ``--pairs`` keeps a precision's two servers up together and alternates their runs
(one serving at a time), so each ratio compares the same minutes. The bus of the AVX-512 host
has two phases (a 2-thread ``sum`` reads ~36 or ~70 GB/s, flipping every few minutes);
``--read-band LO:HI`` keeps only runs whose bound, read just before and after, was inside the
band, so a spread is the systems' own and not the host's. Each run's line gives the load and
the host's steal (its neighbours' share of this VM's CPU time during the run, /proc/stat): a
slow phase in which the 1 GiB sum still reads at full speed shows whether it is theirs.

Needs ``bench/build_llama_server.sh`` run first (llama.cpp systems are skipped otherwise).

    python bench/bench_vs_llamacpp.py                       # everything, 3 repeats
    python bench/bench_vs_llamacpp.py --pairs               # each precision's pair alternating
    python bench/bench_vs_llamacpp.py --pairs --workloads single --read-band 55:90  # fast phase
    python bench/bench_vs_llamacpp.py --systems plait-f32,llama-F32 --workloads single --repeats 1
    python bench/bench_vs_llamacpp.py --systems plait-bf16,llama-BF16 --repeats 1 --single-new 16 \
        --batch-requests 4 --batch-new 8 --conversations 2 --turns 2 --turn-new 8   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from plait.bench.bench_machine import ReadBound, StealShare, step_weight_bytes
from plait.bench.workloads import FEW_SHOT, QUESTIONS, WORDS, distinct_prompts

CACHE = Path(os.environ.get("PLAIT_LLAMA_CACHE", Path.home() / ".cache" / "plait-llamacpp"))

# system name -> (kind, precision label, arguments)
SYSTEMS = {
    "plait-f32": ("plait", "f32", ["--dtype", "float32"]),
    # float32 products on torch's MKL (the default takes numpy's OpenBLAS): side by side
    "plait-f32-mkl": ("plait", "f32", ["--dtype", "float32", "--float32-matmul", "torch"]),
    "plait-bf16": ("plait", "bf16", ["--dtype", "bfloat16"]),
    "plait-int8": ("plait", "int8", ["--dtype", "bfloat16", "--quantization", "int8"]),
    "plait-int4": ("plait", "int4", ["--dtype", "bfloat16", "--quantization", "int4"]),
    "llama-F32": ("llama", "f32", ["F32"]),
    "llama-BF16": ("llama", "bf16", ["BF16"]),
    "llama-Q8_0": ("llama", "int8", ["Q8_0"]),
    "llama-Q4_1": ("llama", "int4", ["Q4_1"]),
}
WORKLOADS = ("single", "shared", "distinct", "multiturn")
EXTRA_WORKLOADS = ("prefill", "longctx")


@dataclass(slots=True)
class Result:
    seconds: float
    tokens: int

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process; ``with`` starts it, waits for /health, and stops it."""

    def __init__(
        self,
        system: str,
        threads: int,
        log_dir: Path,
        plait_flags: list[str],
        pythonpath: str | None = None,
        tag: str = "",
    ) -> None:
        """``pythonpath``: plait from another checkout (its ``PYTHONPATH`` entry)."""
        self.kind, self.precision, extra = SYSTEMS[system]
        self.port = free_port()
        self.log = log_dir / f"{system}{tag}.log"
        self.env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
        if self.kind == "plait":
            self.cmd = [
                sys.executable, "-m", "plait.runtime.server", "--port", str(self.port),
                "--num-threads", str(threads), "--max-running-requests", "64",
                *plait_flags, *extra,
            ]  # fmt: skip
        else:
            model = CACHE / "models" / f"SmolLM2-135M-Instruct.{extra[0]}.gguf"
            binary = CACHE / "bin" / "llama-server"
            if not (binary.exists() and model.exists()):
                raise FileNotFoundError(f"{binary} / {model}: run bench/build_llama_server.sh")
            self.cmd = [
                str(binary), "-m", str(model), "--port", str(self.port), "-t", str(threads),
                "--parallel", "32", "--cont-batching", "-c", str(32 * 2048), "--log-disable",
            ]  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server did not become healthy; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _body(prompt: str, max_tokens: int, stream: bool = False) -> dict:
    return {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": stream,
    }  # fmt: skip


async def complete(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[str, int]:
    r = await client.post("/v1/completions", json=_body(prompt, max_tokens))
    r.raise_for_status()
    data = r.json()
    return data["choices"][0]["text"], int(data["usage"]["completion_tokens"])


async def stream_stamps(
    client: httpx.AsyncClient, prompt: str, new: int
) -> tuple[list[float], int]:
    """Streams one greedy completion of ``new`` tokens: the arrival time of each chunk that
    carries text, and the tokens produced, from the usage the stream ends with (``ignore_eos``:
    ``new`` without one). A chunk may carry several tokens (the detokenizer holding back bytes,
    a server's stream interval)."""
    body = _body(prompt, new, True) | {"stream_options": {"include_usage": True}}
    stamps: list[float] = []
    produced = new
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
                if chunk.get("usage"):
                    produced = int(chunk["usage"]["completion_tokens"])
    return stamps, produced


async def stream_rate(client: httpx.AsyncClient, prompt: str, new: int) -> Result:
    """Decode rate of one stream: the tokens after the first over the time from the first
    text chunk to the last (``stream_stamps``, the first chunk taken as one token; the prompt's
    prefill is before the first chunk, outside the time)."""
    stamps, produced = await stream_stamps(client, prompt, new)
    return Result(stamps[-1] - stamps[0], produced - 1)


async def single(client: httpx.AsyncClient, rep: int, new: int) -> Result:
    return await stream_rate(client, f"Story {rep}: Once upon a time, in a small village,", new)


async def prefill(client: httpx.AsyncClient, prompts: list[str]) -> Result:
    """Prompt tokens a second over ``prompts`` sent one after another, one new token each."""
    t, tokens = time.perf_counter(), 0
    for p in prompts:
        r = await client.post("/v1/completions", json=_body(p, 1))
        r.raise_for_status()
        tokens += int(r.json()["usage"]["prompt_tokens"])
    return Result(time.perf_counter() - t, tokens)


async def batch(client: httpx.AsyncClient, prompts: list[str], new: int) -> Result:
    t = time.perf_counter()
    outs = await asyncio.gather(*(complete(client, p, new) for p in prompts))
    return Result(time.perf_counter() - t, sum(n for _, n in outs))


def shared_prompts(rep: int, n: int = 32) -> list[str]:
    prefix = f"Quiz {rep}.\n\n" + "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT)
    return [f"{prefix}Question: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:" for i in range(n)]


async def multiturn(client: httpx.AsyncClient, rep: int, convs: int, turns: int, new: int):
    rng = random.Random(rep)

    async def conversation(i: int) -> int:
        text, produced = f"Conversation {rep}-{i}.\n", 0
        for _ in range(turns):
            ask = " ".join(rng.choice(WORDS) for _ in range(40))
            text += f"User: tell me about {ask}\nAssistant:"
            out, n = await complete(client, text, new)
            text += out + "\n"
            produced += n
        return produced

    t = time.perf_counter()
    counts = await asyncio.gather(*(conversation(i) for i in range(convs)))
    return Result(time.perf_counter() - t, sum(counts))


async def run_workload(base: str, workload: str, rep: int, args: argparse.Namespace) -> Result:
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        if workload == "single":
            return await single(client, rep, args.single_new)
        n, new = args.batch_requests, args.batch_new
        if workload == "shared":
            return await batch(client, shared_prompts(rep, n), new)
        if workload == "distinct":
            return await batch(client, distinct_prompts(n, seed=1000 + rep), new)
        if workload == "longctx":
            prompt = distinct_prompts(1, args.longctx_words, 3000 + rep)[0]
            return await stream_rate(client, prompt, args.single_new)
        if workload == "prefill":
            prompts = distinct_prompts(args.prefill_requests, args.prefill_words, 2000 + rep)
            return await prefill(client, prompts)
        return await multiturn(client, rep, args.conversations, args.turns, args.turn_new)


def step_bytes(precision: str, kind: str) -> int:
    """Weight bytes one decode step reads: plait's from its layers, llama.cpp's from the file."""
    if kind == "plait":
        return step_weight_bytes({"f32": "float32", "bf16": "bfloat16"}.get(precision, precision))
    from gguf import GGUFReader

    name = {"f32": "F32", "bf16": "BF16", "int8": "Q8_0", "int4": "Q4_1"}[precision]
    reader = GGUFReader(CACHE / "models" / f"SmolLM2-135M-Instruct.{name}.gguf")
    return sum(int(t.n_bytes) for t in reader.tensors)  # the tied embedding is the head


def add_workload_args(ap: argparse.ArgumentParser, single_new: int = 64) -> None:
    """The workloads' sizes (``run_workload`` reads them): the issue's by default, smaller
    ones for a smoke run."""
    ap.add_argument(
        "--single-new", type=int, default=single_new, help="tokens of the single stream"
    )
    ap.add_argument("--batch-requests", type=int, default=32, help="shared / distinct requests")
    ap.add_argument("--batch-new", type=int, default=64, help="new tokens per batch request")
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--turn-new", type=int, default=32, help="new tokens per turn")
    ap.add_argument("--prefill-requests", type=int, default=2, help="prompts of ``prefill``")
    # a token a word (``distinct_prompts``), inside llama-server's 2,048 a slot (-c 65536, 32
    # slots) with the stream's new tokens
    ap.add_argument("--prefill-words", type=int, default=800, help="words a ``prefill`` prompt")
    ap.add_argument("--longctx-words", type=int, default=1800, help="words a ``longctx`` prompt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(s for s in SYSTEMS if s != "plait-f32-mkl"))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_workload_args(ap)
    ap.add_argument(
        "--stream-interval", type=int, default=1, help="plait's --stream-interval (tokens a chunk)"
    )
    ap.add_argument(
        "--num-scheduler-steps", type=int, default=1, help="plait's decode forwards a step"
    )
    ap.add_argument(
        "--pairs", action="store_true", help="a precision's servers up together, runs alternating"
    )
    ap.add_argument("--log-dir", default="/tmp/plait-vs-llamacpp")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument(
        "--read-band",
        default=None,
        metavar="LO:HI",
        help="run every repeat inside one phase of the host's memory bus: wait until the read "
        "bound is within LO..HI GB/s, and redo a run whose bound, read just before and just "
        "after it, left the band (up to 5 tries)",
    )
    args = ap.parse_args()
    band = _band(args.read_band) if args.read_band else None
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    workloads = args.workloads.split(",")
    unknown = sorted(set(workloads) - set(WORKLOADS + EXTRA_WORKLOADS))
    if unknown:
        ap.error(f"--workloads: unknown {unknown}; known: {WORKLOADS + EXTRA_WORKLOADS}")
    results: dict[str, dict[str, list[float]]] = {}
    # this host's read bandwidth moves 30-50% within minutes (2x within seconds on an AVX-512
    # host, 2026-12-04): each single-stream repeat is judged against the higher of two bounds
    # read just before and just after it (``read_gbps`` beside ``single``), so that a repeat
    # which ran in a fast phase after a slow reading is not put above its bound
    bound = ReadBound() if "single" in workloads or band else None
    steal = StealShare()  # the host's neighbours' share of each run's CPU time
    flags = ["--stream-interval", str(args.stream_interval),
             "--num-scheduler-steps", str(args.num_scheduler_steps)]  # fmt: skip
    for group in _groups(args.systems.split(","), args.pairs):
        with ExitStack() as stack:
            servers: dict[str, Server] = {}
            for system in group:
                try:
                    server = Server(system, args.threads, log_dir, flags)
                except FileNotFoundError as e:
                    print(f"skip {system}: {e}")
                    continue
                print(f"{system}: starting (load {os.getloadavg()[0]:.2f})", flush=True)
                servers[system] = stack.enter_context(server)
                warm = argparse.Namespace(single_new=8)
                asyncio.run(run_workload(server.base, "single", -1, warm))
                results[system] = {w: [] for w in workloads} | ({"read_gbps": []} if bound else {})
            for rep in range(args.repeats):
                for w in workloads:
                    for system, server in servers.items():  # one serving at a time
                        # the bound beside the single stream, or every run inside a band
                        reads = bound if w == "single" or band else None
                        steal.start()
                        r, gbps = _bounded_run(server.base, w, rep, args, reads, band)
                        results[system][w].append(r.rate)
                        if w == "single" and gbps is not None:
                            results[system]["read_gbps"].append(gbps)
                        print(f"  {system} {w} rep {rep}: {r.rate:.1f} tok/s ({r.tokens} tok in "
                              f"{r.seconds:.2f} s, load {os.getloadavg()[0]:.2f}, "
                              f"steal {100 * steal.share():.1f}%)", flush=True)  # fmt: skip
    report(results, workloads, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _band(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        band = (float(lo), float(hi))
    except ValueError:
        band = (0.0, -1.0)
    if not sep or not 0 <= band[0] < band[1]:
        raise SystemExit(f"--read-band: LO:HI in GB/s with 0 <= LO < HI, got {text!r}")
    return band


def _bounded_run(
    base: str,
    workload: str,
    rep: int,
    args: argparse.Namespace,
    bound: ReadBound | None,
    band: tuple[float, float] | None,
    tries: int = 5,
    wait_s: float = 600.0,
) -> tuple[Result, float | None]:
    """One run of ``workload`` and the higher of the read bounds (GB/s) just before and just
    after it (None where no bound is read). With ``band``, the run starts only once the bound
    is inside it (waiting up to ``wait_s``), and is redone while a reading left it: every run
    kept ran in one phase of the host's bus."""
    if bound is None:
        return asyncio.run(run_workload(base, workload, rep, args)), None
    for _ in range(tries):
        before = bound.measure() / 1e9
        if band:
            end = time.monotonic() + wait_s
            while not band[0] <= before <= band[1]:
                if time.monotonic() > end:
                    raise SystemExit(f"the read bound stayed outside {band} GB/s for {wait_s} s")
                time.sleep(2.0)
                before = bound.measure() / 1e9
        r = asyncio.run(run_workload(base, workload, rep, args))
        after = bound.measure() / 1e9
        if not band or band[0] <= after <= band[1]:
            return r, max(before, after)
        print(f"  (redone: the bound left the band, {before:.1f} -> {after:.1f} GB/s)", flush=True)
    raise SystemExit(f"no run of {workload} stayed inside {band} GB/s in {tries} tries")


def _groups(systems: list[str], pairs: bool) -> list[list[str]]:
    """One system at a time, or with ``pairs`` the systems of one precision together (plait's
    and llama.cpp's: both servers up, their runs alternating, one serving at a time), so a
    pair's ratio is measured in the same minutes of this host's shifting speed."""
    if not pairs:
        return [[s] for s in systems]
    by_precision: dict[str, list[str]] = {}
    for s in systems:
        by_precision.setdefault(SYSTEMS[s][1], []).append(s)
    return list(by_precision.values())


def report(results: dict, workloads: list[str], args: argparse.Namespace) -> None:
    med = {s: {w: statistics.median(r[w]) for w in workloads} for s, r in results.items()}
    print(
        f"\nmedians of {args.repeats} (tok/s), spread = max/min - 1; plait --stream-interval "
        f"{args.stream_interval} --num-scheduler-steps {args.num_scheduler_steps}; "
        f"load {os.getloadavg()}"
        + (f"; every run inside a read bound of {args.read_band} GB/s" if args.read_band else "")
    )
    print("| system | " + " | ".join(workloads) + " |")
    print("| --- |" + " --- |" * len(workloads))
    for s, r in results.items():
        cells = [f"{med[s][w]:.1f} ({max(r[w]) / min(r[w]) - 1:.0%})" for w in workloads]
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("\nplait / llama.cpp at the same precision")
    print("| systems | " + " | ".join(workloads) + " |")
    print("| --- |" + " --- |" * len(workloads))
    for ps, (_, prec, _) in SYSTEMS.items():
        ls = next((n for n, (k, p, _) in SYSTEMS.items() if k == "llama" and p == prec), None)
        if ps.startswith("plait") and ps in med and ls in med:
            ratios = [f"{med[ps][w] / med[ls][w]:.2f}x" for w in workloads]
            print(f"| {ps} / {ls} | " + " | ".join(ratios) + " |")
    if "single" in workloads:
        print(
            "\nsingle stream vs the read-bandwidth bound (the higher of two sums over 1 GiB, just "
            "before and just after each repeat)"
        )
        print("| system | weights per step | read GB/s | bound tok/s | measured | fraction |")
        print("| --- | --- | --- | --- | --- | --- |")
        for s, r in results.items():
            kind, prec, _ = SYSTEMS[s]
            nbytes = step_bytes(prec, kind)
            fractions = [
                rate * nbytes / (gbps * 1e9) for rate, gbps in zip(r["single"], r["read_gbps"])
            ]
            bw = statistics.median(r["read_gbps"]) * 1e9
            print(f"| {s} | {nbytes / 1e6:.0f} MB | {bw / 1e9:.1f} | {bw / nbytes:.0f} | "
                  f"{med[s]['single']:.1f} | {statistics.median(fractions):.0%} "
                  f"({min(fractions):.0%}-{max(fractions):.0%}) |")  # fmt: skip


if __name__ == "__main__":
    main()
