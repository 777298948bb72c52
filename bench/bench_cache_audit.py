"""Prompt-cache isolation: the timing audit (Gu et al. 2025) and the throughput it costs.

Part 1, the audit: two real servers with two tenants each, one with ``--cache-isolation
tenant`` (the default for several keys) and one with ``global``; on each, the audit within one
tenant and across the two (``bench/cache_audit.py``). Prints the p-values and the median time
to first token of the victim-prompt (hit) and fresh-prompt (miss) probes.

Part 2, the cost: a shared-system-prompt workload (every request = one system prompt + its
own question) run offline on one engine per setting, with one tenant and with several, the
cache isolated per tenant or global. Isolation makes each tenant prefill the system prompt
once for itself; prints throughput and its ratio to the one-tenant global run.

    python bench/bench_cache_audit.py [--pairs 20] [--prefix 384] [--model PATH] ...
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from plait.bench.cache_audit import PromptSource, run_audit, write_audit_model
from plait.runtime.request_scope import RequestScope
from plait.runtime.server.launch import serve

KEYS = {"victim": "bench-victim-key", "attacker": "bench-attacker-key"}


@contextmanager
def server(root: Path, model_args: list[str], isolation: str) -> Iterator[str]:
    keys = root / "keys.json"
    keys.write_text(json.dumps(KEYS))
    args = [*model_args, "--api-key-file", str(keys), "--cache-isolation", isolation]
    args += ["--max-total-tokens", "65536"]
    log = root / f"server-{isolation}.log"
    with serve(*args, log=log, timeout=300, stop_timeout=30) as started:
        yield started.url


def part_audit(args: argparse.Namespace, root: Path) -> None:
    if args.model is None:
        model_args = ["--model", str(root / "model"), "--load-format", "dummy"]
    elif args.model == "default":
        model_args = []
    else:
        model_args = ["--model", args.model]
    print(f"## audit: {args.pairs} pairs, victim prompts of {args.prefix} tokens")
    print("| server | attacker | p-value | median TTFT hit | median TTFT miss | hit / miss |")
    print("| --- | --- | --- | --- | --- | --- |")
    v, a = KEYS["victim"], KEYS["attacker"]
    for isolation in ("tenant", "global"):
        with server(root, model_args, isolation) as url, httpx.Client(base_url=url) as client:
            prompts = PromptSource(args.vocab, args.prefix, seed=args.seed)
            run_audit(client, v, v, prompts, 2)  # warm-up
            for who, key in (("same tenant", v), ("other tenant", a)):
                r = run_audit(client, v, key, prompts, args.pairs, seed=args.seed)
                cached = f"cached_tokens {min(r.hit_cached_tokens)}..{max(r.hit_cached_tokens)}"
                print(
                    f"| {isolation} | {who} | {r.p_value:.2g} | {r.median_hit * 1e3:.1f} ms "
                    f"| {r.median_miss * 1e3:.1f} ms | {r.median_hit / r.median_miss:.2f} "
                    f"({cached}) |",
                    flush=True,
                )


def part_throughput(args: argparse.Namespace, root: Path) -> None:
    from plait.runtime.config import EngineConfig
    from plait.runtime.sampling_params import SamplingParams
    from plait.runtime.worker.core import EngineCore

    rng = random.Random(args.seed)
    vocab = args.vocab
    system = [rng.randrange(3, vocab) for _ in range(args.system)]
    questions = [
        [rng.randrange(3, vocab) for _ in range(args.question)] for _ in range(args.requests)
    ]
    model = str(root / "model") if args.model is None else args.model
    model = None if model == "default" else model
    dummy = {"load_format": "dummy"} if args.model is None else {}
    settings = [
        ("global", 1),
        ("tenant", 1),
        ("global", args.tenants),
        ("tenant", args.tenants),
    ]
    print(
        f"\n## throughput: {args.requests} requests = {args.system}-token system prompt + "
        f"{args.question}-token question, {args.max_new} new tokens, all submitted at once"
    )
    print("| isolation | tenants | time | requests/s | vs global 1 tenant | prompt tokens cached |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = None
    for isolation, tenants in settings:
        # room for every request unshared, so no row is slowed by eviction or retraction
        pool = args.requests * (args.system + args.question + args.max_new) + 64
        config = EngineConfig.from_kwargs(
            model, max_total_tokens=pool, cache_isolation=isolation, **dummy
        )
        core = EngineCore(config)
        params = {"max_new_tokens": args.max_new, "ignore_eos": True, "temperature": 0}
        warm = SamplingParams.from_dict(params)
        core.add_request("warm", [5, 6, 7], warm)  # first-call costs outside the timing
        while core.has_work:
            core.step()
        start = time.perf_counter()
        for i, q in enumerate(questions):
            sp = SamplingParams.from_dict(params)
            core.add_request(f"r{i}", system + q, sp, scope=RequestScope(tenant=f"t{i % tenants}"))
        while core.has_work:
            core.step()
        elapsed = time.perf_counter() - start
        stats = core.stats()
        core.check_idle()
        del core  # its KV pool goes before the next row allocates one
        base = base or elapsed
        rate = args.requests / elapsed
        share = stats["cached_tokens"] / max(stats["prompt_tokens"], 1)
        print(
            f"| {isolation} | {tenants} | {elapsed:.2f} s | {rate:.2f} | {base / elapsed:.2f}x "
            f"| {share:.0%} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="a real model ('default': SmolLM2-135M-Instruct; unset: a small random llama)",
    )
    p.add_argument("--vocab", type=int, default=2048, help="token ids are drawn below this")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--prefix", type=int, default=384)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--system", type=int, default=512)
    p.add_argument("--question", type=int, default=32)
    p.add_argument("--max-new", type=int, default=8)
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-audit", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model is None:
            write_audit_model(root / "model", args.vocab)
        if not args.skip_audit:
            part_audit(args, root)
        if not args.skip_throughput:
            part_throughput(args, root)


if __name__ == "__main__":
    main()
