"""Accuracy of plait's precisions against its float32 path on SmolLM2-135M-Instruct.

For each of bfloat16, int8 and int4 (``--quantization``), on the same prompts and text:
- greedy agreement: tokens of the greedy continuation equal to float32's before the first
  difference (as a fraction of ``--new`` per prompt, averaged), and prompts fully equal;
- teacher-forced top-1 agreement: along float32's greedy continuation, the fraction of
  positions whose argmax equals float32's token (no divergence compounding);
- perplexity of a fixed English text (prompt logprobs);
- the decode steps' logprob gap: mean |logprob - float32's| of the greedy tokens before each
  prompt's first difference (finer than the greedy agreement, which turns on near-ties).

    python bench/bench_quant_accuracy.py [--variants bfloat16,int8,int4] [--new 24]
"""

from __future__ import annotations

import argparse
import math
import time

from plait.runtime.engine import Engine

PROMPTS = [
    "The capital of France is",
    "List three colors:",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Translate to French: The cat sits on the mat.",
    "Q: What is 12 times 7?\nA: 84\nQ: What is 9 times 8?\nA:",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who had never once left the valley. Every morning he",
    "<|im_start|>user\nExplain why the sky is blue.<|im_end|>\n<|im_start|>assistant\n",
    "The three states of matter are",
]

# A fixed text for perplexity (written for this benchmark).
TEXT = (
    "The river rises in the hills north of the town and runs south for about forty miles before "
    "it reaches the sea. For most of the year it is slow and shallow, and children wade across "
    "it in summer to reach the meadows on the far bank. In early spring, when the snow on the "
    "hills melts, the water comes down brown and fast, and the old stone bridge in the middle of "
    "the town has twice been closed because the river reached the top of its arches. The town "
    "council has discussed building a second bridge for many years, but the cost has always been "
    "too high, and most people agree that the old bridge, which was built more than two hundred "
    "years ago, is one of the reasons visitors come to the town at all. In the evenings, people "
    "walk along the path beside the river, and the cafes near the bridge put tables outside."
)

VARIANTS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"dtype": "float32", "quantization": "int8"},
    "int4": {"dtype": "float32", "quantization": "int4"},
    "int8-bf16": {"dtype": "bfloat16", "quantization": "int8"},
    "int4-bf16": {"dtype": "bfloat16", "quantization": "int4"},
}


def measure(engine: Engine, reference: list[list[int]] | None, new: int) -> dict:
    """Greedy outputs, teacher-forced argmax along ``reference`` and the text's perplexity."""
    tok = engine.tokenizer
    greedy = engine.generate(
        PROMPTS, {"max_new_tokens": new, "temperature": 0}, return_logprob=True
    )
    out = {
        "greedy": [g["output_ids"] for g in greedy],
        "logprobs": [[v for v, _, _ in g["meta_info"]["output_token_logprobs"]] for g in greedy],
    }
    ppl_run = engine.generate(
        input_ids=[tok.encode(TEXT)],
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        return_logprob=True,
        logprob_start_len=0,
    )[0]
    lps = [v for v, _, _ in ppl_run["meta_info"]["input_token_logprobs"] if v is not None]
    out["ppl"] = math.exp(-sum(lps) / len(lps))
    if reference is not None:
        ids = [tok.encode(p) + r for p, r in zip(PROMPTS, reference)]
        starts = [len(tok.encode(p)) for p in PROMPTS]
        params = [
            {
                "max_new_tokens": 1,
                "temperature": 0,
                "return_logprob": True,
                "logprob_start_len": s - 1,
                "top_logprobs_num": 1,
            }
            for s in starts
        ]
        runs = engine.generate(input_ids=ids, sampling_params=params)
        hits = total = 0
        for run, ref in zip(runs, reference):
            top = run["meta_info"][
                "input_top_logprobs"
            ]  # row i predicts token at start - 1 + i + 1
            preds = [row[0][1] for row in top[1 : len(ref) + 1]]
            hits += sum(p == r for p, r in zip(preds, ref))
            total += len(ref)
        out["top1"] = hits / total
    return out


def decode_logprob_gap(base: dict, m: dict) -> float:
    """Mean |logprob - float32's| of the greedy tokens before each prompt's first difference:
    the decode steps' own error, finer than where the first near-tie falls."""
    gaps = [
        abs(x - y)
        for ids_b, ids_m, lp_b, lp_m in zip(
            base["greedy"], m["greedy"], base["logprobs"], m["logprobs"]
        )
        for x, y in zip(lp_b[: prefix_agreement(ids_b, ids_m)], lp_m)
    ]
    return sum(gaps) / max(len(gaps), 1)


def prefix_agreement(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="bfloat16,int8,int4")
    ap.add_argument("--new", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--model", default=None, help="model path (default: SmolLM2 GGUF)")
    args = ap.parse_args()
    engine = Engine(args.model, max_total_tokens=8192, dtype="float32")
    base = measure(engine, None, args.new)
    del engine
    print(f"float32: perplexity {base['ppl']:.3f}")
    rows = [("float32", 1.0, len(PROMPTS), 1.0, base["ppl"], 0.0)]
    for name in args.variants.split(","):
        t = time.perf_counter()
        engine = Engine(args.model, max_total_tokens=8192, **VARIANTS[name])
        load = time.perf_counter() - t
        m = measure(engine, base["greedy"], args.new)
        del engine
        agree = [prefix_agreement(a, b) for a, b in zip(base["greedy"], m["greedy"])]
        frac = sum(agree) / (args.new * len(PROMPTS))
        full = sum(a == args.new for a in agree)
        rows.append((name, frac, full, m["top1"], m["ppl"], decode_logprob_gap(base, m)))
        print(f"{name}: load {load:.1f}s, greedy prefixes {agree}")
    print(
        "\n| variant | greedy agreement | prompts fully equal | teacher-forced top-1 | perplexity"
        " | decode |logprob gap| |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, frac, full, top1, ppl, gap in rows:
        print(
            f"| {name} | {frac:.1%} | {full}/{len(PROMPTS)} | {top1:.1%} | {ppl:.3f} | {gap:.4f} |"
        )


if __name__ == "__main__":
    main()
