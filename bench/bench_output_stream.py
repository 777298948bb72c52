"""Cost of turning worker records into text, per record, along one long output.

Feeds one ``OutputStream`` (the client side of every consumer: ``Engine``, ``Runtime``, the
server) one record per token of a 2,000-token text of the default model's tokenizer, with and
without a stop string and with output logprobs, and prints the median cost of a record over the
first and the last 200 records. A path whose cost does not grow with the output gives a ratio
near 1. No model runs, so the numbers are the output path alone:

  python bench/bench_output_stream.py [--tokens 2000] [--window 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from plait.runtime.client.output_stream import OutputStream, TokenTextCache
from plait.runtime.messages import ReqOutput
from plait.runtime.model.model_source import resolve_model_path
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--window", type=int, default=200)
    args = ap.parse_args()
    tok = load_tokenizer(resolve_model_path(None))
    text = (Path(__file__).parents[1] / "README.md").read_text()
    ids = tok.encode(text * (1 + 4 * args.tokens // max(len(text), 1)), add_special_tokens=False)
    ids = ids[: args.tokens]
    w = args.window
    print(f"# {len(ids)} records of one token each; median us per record, first vs last {w}")
    print(f"{'case':28s} {'first':>8s} {'last':>8s} {'ratio':>6s}")
    cases = {
        "plain": SamplingParams(max_new_tokens=len(ids)),
        "stop string": SamplingParams(max_new_tokens=len(ids), stop=["\n\n###", "END"]),
        "stop + logprobs": SamplingParams(
            max_new_tokens=len(ids), stop=["END"], return_logprob=True
        ),
    }
    for name, params in cases.items():
        stream = OutputStream("r", params, tok, TokenTextCache(tok))
        chunks, times = [], []
        for i, t in enumerate(ids):
            lp = ([-1.0], [t]) if params.return_logprob else (None, None)
            out = ReqOutput("r", i, [t], None, 16, 0, *lp)
            t0 = time.perf_counter()
            chunks.append(stream.feed(out))  # kept, as a consumer that holds its chunks would
            times.append(time.perf_counter() - t0)
        first = statistics.median(times[:w]) * 1e6
        last = statistics.median(times[-w:]) * 1e6
        print(f"{name:28s} {first:8.1f} {last:8.1f} {last / first:6.2f}")


if __name__ == "__main__":
    main()
