"""Grammar backends side by side on the JSONSchemaBench sample (tests/constrained/data): compile
coverage and time (in the killable compile process, 10 s limit), then the per-token mask time
at batch 1 and 32 on the schemas every backend compiled, the default model's tokenizer.

    python -m plait.bench.bench_grammar_backends [--backends xgrammar,outlines,llguidance,auto] [--steps 48]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from plait.constrained.backends import make_compiler
from plait.constrained.compile_process import CompileProcess
from plait.constrained.grammar import CompiledGrammar
from plait.constrained.grammar_state import GrammarState
from plait.constrained.mask import MaskBuilder
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary, build_vocabulary
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model.model_source import resolve_model_path
from plait.runtime.tokenizer import load_tokenizer

SAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "constrained" / "data" / "jsonschemabench"
)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def compile_all(backend: str, vocab: TokenVocabulary, files: list[Path], limit: float) -> dict:
    proc = CompileProcess(backend, vocab, memory_limit_mb=4096)
    compiler = make_compiler(backend, vocab)
    times, grammars, errors = [], {}, {}
    warm = GrammarKey("regex", "a")
    for f in files:
        key = GrammarKey("json", f.read_text())
        proc.compile(warm, 600)  # (re)start the process outside the timings
        t0 = time.perf_counter()
        try:
            payload = proc.compile(key, limit)
        except InvalidRequestError as e:
            errors[f.name] = e.message
            if "did not finish" in e.message:
                times.append(limit)
            continue
        times.append(time.perf_counter() - t0)
        grammars[f] = compiler.load(key, payload)
    proc.kill()
    return {"times": times, "grammars": grammars, "errors": errors}


def mask_times(
    grammars: list[CompiledGrammar], vocab: TokenVocabulary, batch: int, steps: int
) -> list[float]:
    """Seconds per step to fill the batch's bitmask, each row walking its grammar by a seeded
    random allowed token (what a temperature-1 model under the mask does)."""
    rng = random.Random(0)
    states = [GrammarState(grammars[i % len(grammars)], vocab, []) for i in range(batch)]
    builder = MaskBuilder()
    out = []
    for _ in range(steps):
        live = [s if not s.is_terminal() else None for s in states]
        if all(s is None for s in live):
            break
        t0 = time.perf_counter()
        mask = builder.build(live, vocab.size)
        out.append(time.perf_counter() - t0)
        allowed = ~mask.disallowed(vocab.size)
        for i, s in enumerate(live):
            if s is None:
                continue
            ids = [t for t in np.flatnonzero(allowed[i]) if not s.is_stop(int(t))]
            if ids:
                s.accept(int(rng.choice(ids)))
            else:
                states[i] = s  # only a stop may follow: it ends
                s.done = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="xgrammar,outlines,llguidance,auto")
    ap.add_argument("--limit", type=float, default=10.0, help="compile time limit (s)")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--mask-schemas", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(resolve_model_path(None))
    vocab = build_vocabulary(tok, {0, 2}, 49152)
    files = sorted(SAMPLE.glob("*/*.json"))
    backends = args.backends.split(",")
    results = {b: compile_all(b, vocab, files, args.limit) for b in backends}
    print(f"| backend | compiles (of {len(files)}) | compile p50 / p90 / max (ms) |")
    print("| --- | --- | --- |")
    for b, r in results.items():
        ms = [t * 1e3 for t in r["times"]]
        print(
            f"| {b} | {len(r['grammars'])} | {pct(ms, 50):.1f} / {pct(ms, 90):.1f} / "
            f"{max(ms, default=float('nan')):.1f} |"
        )
    for b, r in results.items():
        reasons: dict[str, int] = {}
        for msg in r["errors"].values():
            head = msg.split(" at ")[0] if msg.startswith("keyword") else msg[:60]
            reasons[head] = reasons.get(head, 0) + 1
        print(f"{b} refusals:", sorted(reasons.items(), key=lambda kv: -kv[1])[:8])
    common = [f for f in files if all(f in r["grammars"] for r in results.values())]
    common = common[: args.mask_schemas]
    print(f"\nmask fill per step on {len(common)} schemas every backend compiled (µs)")
    # interleaved (each schema, then each batch-32 round, runs every backend back to back) so
    # that load swings hit every backend alike
    ts: dict[tuple[str, int], list[float]] = {(b, n): [] for b in results for n in (1, 32)}
    for f in common:
        for b, r in results.items():
            ts[b, 1] += mask_times([r["grammars"][f]], vocab, 1, args.steps)
    for order in (list(results), list(results)[::-1]):
        for b in order:
            grammars = [results[b]["grammars"][f] for f in common]
            ts[b, 32] += mask_times(grammars, vocab, 32, args.steps // 2)
    print("| backend | batch | mean | p99 | max |")
    print("| --- | --- | --- | --- | --- |")
    for (b, batch), xs in ts.items():
        us = [t * 1e6 for t in xs]
        print(f"| {b} | {batch} | {statistics.mean(us):.0f} | {pct(us, 99):.0f} | {max(us):.0f} |")


if __name__ == "__main__":
    main()
