"""Constrained decoding: jump-forward on vs off on a template-heavy JSON schema, the mask's cost
per decode step, and grammar compile / cache-hit times. Runs side by side in one process.

    python -m plait.bench.bench_constrained [--requests 32] [--steps 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from plait.constrained.grammar_cache import GrammarCache
from plait.constrained.spec import GrammarKey
from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.request import Req

# Like the SGLang paper's JSON benchmark: many fixed keys, a few short values.
TEMPLATE_SCHEMA = {
    "type": "object",
    "properties": {
        "city_name": {"type": "string", "maxLength": 12},
        "country_of_the_city": {"type": "string", "maxLength": 12},
        "is_a_capital_city": {"type": "boolean"},
        "population_in_millions": {"type": "integer", "minimum": 0, "maximum": 99},
        "continent_where_it_lies": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
        "official_language_spoken": {"type": "string", "maxLength": 10},
        "has_a_coastline_on_the_sea": {"type": "boolean"},
        "climate_classification": {"enum": ["temperate", "tropical", "arid", "polar"]},
    },
    "required": [
        "city_name",
        "country_of_the_city",
        "is_a_capital_city",
        "population_in_millions",
        "continent_where_it_lies",
        "official_language_spoken",
        "has_a_coastline_on_the_sea",
        "climate_classification",
    ],
}
FIVE_FIELD_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "score", "active", "color"],
}
NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 5},
        "author": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer"},
                "verified": {"type": "boolean"},
            },
            "required": ["name", "age"],
        },
    },
    "required": ["title", "tags", "author"],
}
CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Lagos"]
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def bench_jump_forward(engine: Engine, n: int, repeats: int) -> dict:
    prompts = [
        CHAT.format(f"Give information about {CITIES[i % len(CITIES)]} (request {i}) as JSON.")
        for i in range(n)
    ]
    params = {"json_schema": json.dumps(TEMPLATE_SCHEMA), "max_new_tokens": 200, "temperature": 0}
    grammar, sched = engine.scheduler.grammar, engine.scheduler
    engine.generate(prompts[:2], params)  # compile and warm up
    rows = {}
    for jump in (False, True):
        rows[jump] = {"seconds": [], "forwards": 0, "tokens": 0, "chars": 0, "valid": 0}
    for _ in range(repeats):
        for jump in (False, True):  # interleaved: the machine's noise hits both alike
            grammar.jump_forward = jump
            engine.flush_cache()
            f0, t0 = sched.stats.forward_count, time.perf_counter()
            outs = engine.generate(prompts, params)
            row = rows[jump]
            row["seconds"].append(time.perf_counter() - t0)
            row["forwards"] = sched.stats.forward_count - f0
            row["tokens"] = sum(len(o["output_ids"]) for o in outs)
            row["chars"] = sum(len(o["text"]) for o in outs)
            row["valid"] = sum(_is_json(o["text"]) for o in outs)
    grammar.jump_forward = True
    for row in rows.values():
        row["median_s"] = statistics.median(row["seconds"])
        row["req_per_s"] = n / row["median_s"]
        row["chars_per_s"] = row["chars"] / row["median_s"]
    return rows


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def decode_step_times(engine: Engine, batch: int, constrained: bool, steps: int) -> list[float]:
    """Per-step wall time of ``steps`` decode steps, every row constrained or none."""
    sched = engine.scheduler
    extra = {"regex": r"[a-zA-Z ,.]+"} if constrained else {}
    reqs = []
    for i in range(batch):
        # min_new_tokens: a grammar's end would end a row (ignore_eos or not); below it the
        # grammar holds EOS back, so every row lives through the timed steps
        p = SamplingParams(
            max_new_tokens=steps + 2,
            min_new_tokens=steps + 2,
            temperature=0,
            ignore_eos=True,
            **extra,
        )
        ids = engine.encode(f"Write a long story about a dragon number {i}.")
        reqs.append(Req(rid=f"bench-{constrained}-{batch}-{i}", input_ids=ids, sampling_params=p))
    for r in reqs:
        sched.add_request(r)
    while sched.waiting or sched.chunked_req is not None or sched.grammar.waiting:
        sched.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sched.step()
        times.append(time.perf_counter() - t0)
    while not sched.is_idle():
        sched.step()
    return times


def bench_mask(engine: Engine, steps: int, repeats: int) -> dict:
    engine.scheduler.grammar.jump_forward = False
    out = {}
    for batch in (1, 32):
        decode_step_times(engine, batch, True, 4)  # warm the per-state mask cache
        per = {False: [], True: []}
        for _ in range(repeats):
            for constrained in (False, True):
                engine.flush_cache()
                per[constrained] += decode_step_times(engine, batch, constrained, steps)
        out[batch] = {c: statistics.median(t) * 1e3 for c, t in per.items()}
    engine.scheduler.grammar.jump_forward = True
    return out


def bench_compile(engine: Engine) -> dict:
    vocab = engine.scheduler.grammar.cache.vocab()
    out = {}
    for name, schema in (("5-field", FIVE_FIELD_SCHEMA), ("nested", NESTED_SCHEMA)):
        key = GrammarKey("json", json.dumps(schema))
        with tempfile.TemporaryDirectory() as d:
            cache = GrammarCache(lambda: vocab, Path(d), isolate=False)
            t0 = time.perf_counter()
            cache.compile_now(key)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            cache.compile_now(key)
            memory = time.perf_counter() - t0
            disk_cache = GrammarCache(lambda: vocab, Path(d), isolate=False)
            t0 = time.perf_counter()
            disk_cache.compile_now(key)
            disk = time.perf_counter() - t0
            cache.shutdown()
            disk_cache.shutdown()
        out[name] = {
            "compile_ms": cold * 1e3,
            "memory_hit_ms": memory * 1e3,
            "disk_hit_ms": disk * 1e3,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="compile,json,mask", help="comma-separated subset")
    args = ap.parse_args()
    torch.set_num_threads(2)
    engine = Engine(max_total_tokens=32768, grammar_cache_dir=None)

    parts = set(args.parts.split(","))
    comp = bench_compile(engine) if "compile" in parts else {}
    for name, r in comp.items():
        print(
            f"compile {name}: cold {r['compile_ms']:.1f} ms, in-memory hit {r['memory_hit_ms']:.3f}"
            f" ms, disk hit (new process) {r['disk_hit_ms']:.1f} ms"
        )

    jf = bench_jump_forward(engine, args.requests, args.repeats) if "json" in parts else {}
    for jump, r in jf.items():
        print(
            f"json x{args.requests} jump_forward={'on ' if jump else 'off'}: "
            f"forwards {r['forwards']}, median {r['median_s']:.2f} s, {r['req_per_s']:.2f} req/s, "
            f"{r['chars_per_s']:.0f} chars/s, {r['tokens']} tokens, {r['valid']}/{args.requests}"
            " valid JSON"
        )
    if jf:
        print(
            f"jump-forward speedup: {jf[True]['req_per_s'] / jf[False]['req_per_s']:.2f}x throughput, "
            f"{jf[False]['forwards'] / jf[True]['forwards']:.2f}x fewer forwards"
        )

    mask = bench_mask(engine, args.steps, args.repeats) if "mask" in parts else {}
    for batch, r in mask.items():
        print(
            f"decode step batch {batch}: unconstrained {r[False]:.1f} ms, all constrained "
            f"{r[True]:.1f} ms, overhead {100 * (r[True] / r[False] - 1):+.1f}%"
        )


if __name__ == "__main__":
    main()
