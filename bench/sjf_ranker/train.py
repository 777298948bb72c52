"""Trains the SJF length ranker (``runtime/worker/length_ranker.py``) on ``lengths.jsonl``.

As in Fu et al. 2024: the target is the *order* of output lengths, learned with a listwise
ranking loss (ListMLE over random lists of ``--list-size`` prompts) and measured by Kendall's
tau on held-out prompts, against two baselines: the prompt's length, and random scores.

    PYTHONPATH=... python -m plait.bench.sjf_ranker.train
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from plait.bench.sjf_ranker.gen_data import DATA
from plait.runtime.worker.length_ranker import DEFAULT_RANKER, LengthRanker, hashed_features


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled), O(n^2): the held-out set is small."""
    conc = disc = tie_x = tie_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tie_x) * (conc + disc + tie_y)) ** 0.5
    return (conc - disc) / denom if denom else 0.0


def list_mle(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ListMLE: -log P(the true order | scores) under the Plackett-Luce model, longest first.
    ``scores`` / ``lengths``: [lists, size]."""
    # ties broken at random so no order among equals is taught
    noise = torch.rand_like(lengths, dtype=torch.float32) * 0.5
    order = torch.argsort(lengths.float() + noise, dim=1, descending=True)
    s = scores.gather(1, order)
    # log-sum-exp over each suffix: s_i .. s_n
    suffix = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return (suffix - s).sum(1).mean()


def fit_ranker(
    prompts: list[list[int]],
    lengths: list[int],
    buckets: int = 4096,
    steps: int = 1500,
    list_size: int = 16,
    seed: int = 0,
    weight_decay: float = 3e-2,  # shrinks rare tokens: the wording, not the filler, ranks
) -> LengthRanker:
    """A ``LengthRanker`` fitted with ListMLE on random lists of ``list_size`` prompts."""
    torch.manual_seed(seed)
    x = torch.tensor(np.stack([hashed_features(ids, buckets) for ids in prompts]))
    y = torch.tensor(lengths)
    size = min(list_size, len(prompts))
    w = torch.zeros(buckets + 1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.02, weight_decay=weight_decay)
    for step in range(steps):
        idx = torch.stack([torch.randperm(len(prompts))[:size] for _ in range(32)])
        loss = list_mle(x[idx] @ w, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"step {step}: ListMLE {loss.item():.3f}")
    return LengthRanker(w.detach().numpy())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_RANKER)
    ap.add_argument("--buckets", type=int, default=4096)
    ap.add_argument("--held-out", type=float, default=0.25)
    ap.add_argument("--list-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line]
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    cut = int(len(rows) * (1 - args.held_out))
    train, test = rows[:cut], rows[cut:]
    ranker = fit_ranker(
        [r["input_ids"] for r in train],
        [r["output_len"] for r in train],
        args.buckets,
        args.steps,
        args.list_size,
        args.seed,
    )
    ranker.save(args.out)
    ranker = LengthRanker.load(args.out)  # score with the weights as shipped (float16)

    true = [float(r["output_len"]) for r in test]
    learned = [ranker.score_ids(r["input_ids"]) for r in test]
    prompt_len = [float(len(r["input_ids"])) for r in test]
    rand = [kendall_tau_b([rng.random() for _ in test], true) for _ in range(200)]
    train_true = [float(r["output_len"]) for r in train]
    metrics = {
        "train_prompts": len(train),
        "held_out_prompts": len(test),
        "tau_learned": round(kendall_tau_b(learned, true), 3),
        "tau_prompt_length": round(kendall_tau_b(prompt_len, true), 3),
        "tau_random_mean": round(float(np.mean(rand)), 3),
        "tau_random_std": round(float(np.std(rand)), 3),
        "tau_learned_train": round(
            kendall_tau_b([ranker.score_ids(r["input_ids"]) for r in train], train_true), 3
        ),
        "ranker_bytes": args.out.stat().st_size,
    }
    print(json.dumps(metrics, indent=1))
    args.out.with_suffix(".json").write_text(json.dumps(metrics, indent=1) + "\n")


if __name__ == "__main__":
    main()
