"""Scores a waiting request's expected output length from its prompt ids, for SJF by ranking.

After Fu et al., "Efficient LLM Scheduling by Learning to Rank" (2024): exact output lengths
cannot be predicted, but their order within a batch can, and that order is all shortest-job-
first needs. The paper ranks with a small OPT model over the prompt; here the features must
exist *before* prefill (the ranking decides who is prefilled), so the model's own hidden state
is not available yet. We use a hashed bag of the prompt's token unigrams and bigrams (plus the
log prompt length): no model pass, microseconds per prompt, and the wording that sets an
answer's length ("in one word", "a detailed essay", "step by step") is in its tokens.

The weights are trained offline by ``bench/sjf_ranker/train.py`` with a listwise ranking loss
(ListMLE, as in the paper) and saved as a small ``.npz`` next to this module. They are tied to
the tokenizer they were trained on (SmolLM2's); on another vocabulary the scores still order
requests, but by accident.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_RANKER = Path(__file__).with_name("ranker") / "smollm2_sjf_ranker.npz"
_UNIGRAM_MUL = 2654435761
_BIGRAM_MUL = 1000003


def hashed_features(ids: list[int], buckets: int) -> np.ndarray:
    """``[buckets + 1]`` float32: log(1 + count) of each hashed unigram and bigram of ``ids``
    (unigrams and bigrams share the buckets), then log(1 + len(ids))."""
    x = np.zeros(buckets + 1, dtype=np.float32)
    if ids:
        a = np.asarray(ids, dtype=np.int64)
        uni = (a * _UNIGRAM_MUL) % buckets
        bi = ((a[:-1] * _BIGRAM_MUL + a[1:]) * _UNIGRAM_MUL) % buckets
        np.add.at(x, uni, 1.0)
        np.add.at(x, bi, 1.0)
        np.log1p(x[:buckets], out=x[:buckets])
    x[buckets] = np.log1p(len(ids))
    return x


class LengthRanker:
    """A linear scorer over ``hashed_features``: a larger score means a longer expected output.
    Only the order of scores means anything."""

    def __init__(self, weights: np.ndarray, bias: float = 0.0) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = float(bias)
        self.buckets = len(self.weights) - 1

    @classmethod
    def load(cls, path: str | Path | None = None) -> LengthRanker:
        with np.load(Path(path) if path is not None else DEFAULT_RANKER) as f:
            return cls(f["weights"], float(f["bias"]))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path, weights=self.weights.astype(np.float16), bias=np.float32(self.bias)
        )

    def score_ids(self, ids: list[int]) -> float:
        return float(hashed_features(ids, self.buckets) @ self.weights) + self.bias
