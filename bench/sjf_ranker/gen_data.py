"""Generates the ranker's training data: the default model's own output lengths.

Runs SmolLM2-135M-Instruct (greedy, chat template) over ``make_prompts`` and writes one JSON
line per prompt: ``{"prompt", "family", "input_ids", "output_len", "finish"}``. ``input_ids``
are the templated prompt's token ids, exactly what the scheduler sees for a waiting request.

    PYTHONPATH=... python -m plait.bench.sjf_ranker.gen_data --n 40 --max-new-tokens 96 --chunk 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from plait.bench.sjf_ranker.prompts import make_prompts
from plait.runtime.engine import Engine

DATA = Path(__file__).with_name("lengths.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=48)
    args = ap.parse_args()
    engine = Engine(None, num_threads=args.threads, max_total_tokens=16384)
    prompts = make_prompts(args.n)
    t0 = time.monotonic()
    # in chunks, each line written as its chunk ends: an interrupted run keeps what it made
    with open(args.out, "w") as f:
        for start in range(0, len(prompts), args.chunk):
            part = prompts[start : start + args.chunk]
            texts = [
                engine.apply_chat_template([{"role": "user", "content": p["prompt"]}]) for p in part
            ]
            outs = engine.generate(texts, {"temperature": 0, "max_new_tokens": args.max_new_tokens})
            for p, text, out in zip(part, texts, outs):
                row = {
                    "prompt": p["prompt"],
                    "family": p["family"],
                    "input_ids": engine.encode(text),
                    "output_len": out["meta_info"]["completion_tokens"],
                    "finish": out["meta_info"]["finish_reason"]["type"],
                }
                f.write(json.dumps(row) + "\n")
            f.flush()
            done = start + len(part)
            print(f"{done}/{len(prompts)} prompts, {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
