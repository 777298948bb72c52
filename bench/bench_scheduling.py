"""Scheduling policies side by side on the same arrivals, latency in scheduler steps.

Policy comparison: the tiny random model with every request's output length forced (min =
max new tokens, EOS ignored) to the length SmolLM2-135M-Instruct really produced for that
prompt (``bench/sjf_ranker/lengths.jsonl``, held-out split): the schedule, counted in steps,
is what a real run of those prompts would get, at a fraction of the compute. The learned
``sjf`` scores each request's real SmolLM2 prompt ids with the shipped ranker; ``sjf-oracle``
scores it by its true length (the bound SJF could reach). Arrivals are Poisson in steps at
two rates; every policy sees the same arrivals.

Fairness: two tenants, A sending 10x B's load, fcfs vs the VTC fair policy; per-tenant
latency and service (weighted tokens) over time.

    PYTHONPATH=... python -m plait.bench.bench_scheduling [--requests 60 --rates 0.1 0.2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from plait.bench.sched_driver import Arrival, Timing, run_arrivals
from plait.bench.sjf_ranker.gen_data import DATA
from plait.runtime.engine import Engine
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.length_ranker import DEFAULT_RANKER, LengthRanker
from plait.runtime.worker.request import Req

POLICIES = ("fcfs", "lpm", "sjf", "sjf-oracle", "random")


class LookupScorer:
    """Scores a request by a value looked up by rid (the real prompt's ranker score, or the
    true length for the oracle): the tiny model's requests carry stand-in ids."""

    def __init__(self, by_rid: dict[str, float]) -> None:
        self.by_rid = by_rid

    def score(self, req: Req) -> float:
        return self.by_rid[req.rid]


def make_model(out: Path) -> Path:
    """A tiny random llama (the scheduling depends on lengths, not on the weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def held_out(rows: list[dict], share: float = 0.25, seed: int = 0) -> list[dict]:
    """The same held-out split as ``sjf_ranker/train.py``."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[int(len(rows) * (1 - share)) :]


def workload(rows: list[dict], n: int, rate: float, seed: int) -> list[tuple[Arrival, dict]]:
    rng = random.Random(seed)
    out, tick = [], 0.0
    for i in range(n):
        row = rng.choice(rows)
        tick += rng.expovariate(rate)
        length = max(1, row["output_len"])
        p = SamplingParams(max_new_tokens=length, min_new_tokens=length, temperature=0,
                           ignore_eos=True)  # fmt: skip
        # stand-in ids for the tiny vocabulary, same length, a unique head (no false sharing)
        ids = [3 + i % 300] + [10 + t % 300 for t in row["input_ids"][1:]]
        out.append((Arrival(int(tick), f"q{i}", ids, p), row))
    return out


def summarize(timings: dict[str, Timing], wall: float) -> dict[str, float]:
    lat = sorted(t.latency for t in timings.values())
    tokens = sum(len(t.output_ids or []) for t in timings.values())
    last = max(t.finished for t in timings.values())
    return {
        "mean": statistics.fmean(lat),
        "p50": lat[len(lat) // 2],
        "p90": lat[int(len(lat) * 0.9)],
        "tok_per_step": tokens / last,
        "tok_per_s": tokens / wall,
    }


def run_policy(model: Path, policy: str, jobs: list[tuple[Arrival, dict]], ranker: LengthRanker,
               max_running: int) -> dict[str, float]:  # fmt: skip
    base = "sjf" if policy.startswith("sjf") else policy
    eng = Engine(model, max_total_tokens=16384, schedule_policy=base, num_threads=1,
                 max_running_requests=max_running, enable_mixed_chunk=False)  # fmt: skip
    if base == "sjf":
        by_rid = {
            a.rid: float(row["output_len"]) if policy == "sjf-oracle"
            else ranker.score_ids(row["input_ids"])
            for a, row in jobs
        }  # fmt: skip
        eng.scheduler.policy.scorer = LookupScorer(by_rid)
    arrivals = [Arrival(a.step, a.rid, a.input_ids, a.params.copy()) for a, _ in jobs]
    t0 = time.monotonic()
    timings = run_arrivals(eng.core, arrivals)
    out = summarize(timings, time.monotonic() - t0)
    eng.check_idle()
    return out


def fairness(model: Path, n_light: int, max_running: int, seed: int) -> dict[str, dict]:
    """A sends 10x B's requests, both Poisson over the same span; fcfs vs fair."""
    rng = random.Random(seed)
    span = n_light * 40
    jobs: list[Arrival] = []
    for tenant, count in (("A", 10 * n_light), ("B", n_light)):
        for i in range(count):
            n = rng.choice([8, 16, 32])
            p = SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0,
                               ignore_eos=True)  # fmt: skip
            ids = [rng.randrange(10, 300) for _ in range(rng.randrange(8, 24))]
            jobs.append(Arrival(rng.randrange(span), f"{tenant}{i}", ids, p, tenant=tenant))
    out = {}
    for fair in (False, True):
        eng = Engine(model, max_total_tokens=16384, schedule_policy="fcfs", num_threads=1,
                     max_running_requests=max_running, enable_mixed_chunk=False,
                     enable_fair_scheduling=fair)  # fmt: skip
        served = {"A": 0, "B": 0}
        over_time: list[tuple[int, int, int]] = []
        sched = eng.scheduler
        seen: dict[str, int] = {}

        def tick(t: int, served=served, over_time=over_time, sched=sched, seen=seen) -> None:
            for req in list(sched.running):
                seen[req.rid] = len(req.output_ids)
            if t % max(1, span // 8) == 0:
                for tenant in served:
                    served[tenant] = sum(v for k, v in seen.items() if k.startswith(tenant))
                over_time.append((t, served["A"], served["B"]))

        jobs_copy = [Arrival(a.step, a.rid, a.input_ids, a.params.copy(), tenant=a.tenant)
                     for a in jobs]  # fmt: skip
        timings = run_arrivals(eng.core, jobs_copy, on_tick=tick)
        per = {}
        for tenant in ("A", "B"):
            lat = [t.latency for t in timings.values() if t.tenant == tenant]
            per[tenant] = round(statistics.fmean(lat), 1)
        out["fair" if fair else "fcfs"] = {"mean_latency": per, "tokens_over_time": over_time}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--max-running", type=int, default=4)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [json.loads(x) for x in DATA.read_text().splitlines() if x]
    test_rows = held_out(rows)
    ranker = LengthRanker.load(DEFAULT_RANKER)
    metrics = json.loads(DEFAULT_RANKER.with_suffix(".json").read_text())
    print(f"ranker on {metrics['held_out_prompts']} held-out prompts: Kendall tau learned "
          f"{metrics['tau_learned']}, prompt length {metrics['tau_prompt_length']}, random "
          f"{metrics['tau_random_mean']} +- {metrics['tau_random_std']}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "tiny")
        for rate in args.rates:
            jobs = workload(test_rows, args.requests, rate, args.seed)
            print(f"\nrate {rate} req/step, {args.requests} requests, max_running "
                  f"{args.max_running}; latency in steps")  # fmt: skip
            print(f"{'policy':<11} {'mean':>7} {'p50':>5} {'p90':>5} {'tok/step':>8} "
                  f"{'tok/s':>7} {'mean vs fcfs':>12}")  # fmt: skip
            base = None
            for policy in POLICIES:
                r = run_policy(model, policy, jobs, ranker, args.max_running)
                base = base or r["mean"]
                print(f"{policy:<11} {r['mean']:>7.1f} {r['p50']:>5} {r['p90']:>5} "
                      f"{r['tok_per_step']:>8.2f} {r['tok_per_s']:>7.0f} "
                      f"{r['mean'] / base:>12.2f}")  # fmt: skip
        fair = fairness(model, n_light=4, max_running=args.max_running, seed=args.seed)
        print("\ntwo tenants, A sends 10x B's requests; mean latency in steps per tenant")
        for name, r in fair.items():
            print(f"{name:<5} A {r['mean_latency']['A']:>6}  B {r['mean_latency']['B']:>6}  "
                  f"tokens served (step, A, B): {r['tokens_over_time']}")  # fmt: skip


if __name__ == "__main__":
    main()
