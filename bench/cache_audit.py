"""The prompt-cache timing audit of Gu et al. 2025 ("Auditing Prompt Caching in Language Model
APIs"), against a running plait server.

For each pair: the victim sends a fresh prompt (so the server caches it for the victim); then
the attacker sends, in random order, a probe with the victim's prompt (a hit if the cache is
shared with the victim) and a probe with a fresh prompt of the same length (a miss). Time to
first token of every probe is measured over a streaming request. The one-sided Mann-Whitney
test asks whether the victim-prompt probes are faster than the fresh ones; a small p-value is a
detected cache hit, i.e. the attacker learned the victim's prompt. Each victim prompt is probed
once, since the probe itself caches it (for the attacker).

Every prompt starts with its own token, so no two prompts of an audit share any prefix and the
``cached_tokens`` a probe reports counts hits on the victim's prompt alone.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from plait.bench.rank_test import mann_whitney_less


@dataclass(slots=True)
class Probe:
    ttft: float  # seconds from sending the request to its first streamed token
    cached_tokens: int


@dataclass(slots=True)
class AuditResult:
    hits: list[Probe] = field(default_factory=list)  # probes with the victim's prompt
    misses: list[Probe] = field(default_factory=list)  # probes with a fresh prompt

    @property
    def p_value(self) -> float:
        return mann_whitney_less([p.ttft for p in self.hits], [p.ttft for p in self.misses]).p_value

    @property
    def median_hit(self) -> float:
        return statistics.median(p.ttft for p in self.hits)

    @property
    def median_miss(self) -> float:
        return statistics.median(p.ttft for p in self.misses)

    @property
    def hit_cached_tokens(self) -> list[int]:
        return [p.cached_tokens for p in self.hits]

    def summary(self) -> str:
        return (
            f"p = {self.p_value:.3g}, median TTFT hit {self.median_hit * 1e3:.1f} ms / "
            f"miss {self.median_miss * 1e3:.1f} ms, cached_tokens on victim-prompt probes "
            f"{min(self.hit_cached_tokens)}..{max(self.hit_cached_tokens)}"
        )


def write_audit_model(out_dir: Path, vocab_size: int) -> Path:
    """config.json of a small llama (~15M parameters), served with ``--load-format dummy``
    (random weights): its prefill of a few hundred tokens (~10 GFLOP) costs several times a
    request's fixed costs even on a fast, quiet machine, so a hit and a miss differ clearly in
    time to first token."""
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ).save_pretrained(out_dir)
    return out_dir


class PromptSource:
    """Random prompts over ``[low, vocab)``, each starting with a token no other has used."""

    def __init__(self, vocab_size: int, length: int, seed: int, low: int = 3) -> None:
        self.rng = random.Random(seed)
        self.first = list(range(low, vocab_size))
        self.rng.shuffle(self.first)
        self.vocab_size, self.length, self.low = vocab_size, length, low

    def __call__(self) -> list[int]:
        if not self.first:
            raise ValueError("the vocabulary has no unused first token left")
        rest = [self.rng.randrange(self.low, self.vocab_size) for _ in range(self.length - 1)]
        return [self.first.pop(), *rest]


def stream_ttft(client: httpx.Client, key: str, ids: list[int]) -> Probe:
    """One streaming ``/generate`` of one token; times the first chunk carrying output."""
    params = {"max_new_tokens": 1, "ignore_eos": True}
    body = {"input_ids": ids, "stream": True, "sampling_params": params}
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    with client.stream("POST", "/generate", json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data:"))
            if "error" in chunk:
                raise RuntimeError(f"probe failed: {chunk['error']}")
            if chunk["output_ids"]:
                ttft = time.perf_counter() - start
                return Probe(ttft, chunk["meta_info"]["cached_tokens"])
    raise RuntimeError("the stream ended without a token")


def run_audit(
    client: httpx.Client,
    victim_key: str,
    attacker_key: str,
    prompts: PromptSource,
    pairs: int,
    seed: int = 0,
) -> AuditResult:
    """Runs ``pairs`` victim prompts, each followed by a hit probe and a miss probe (in random
    order) from the attacker. ``victim_key == attacker_key`` audits within one tenant."""
    order = random.Random(seed)
    result = AuditResult()
    for _ in range(pairs):
        victim = prompts()
        stream_ttft(client, victim_key, victim)
        probes = [("hit", victim), ("miss", prompts())]
        order.shuffle(probes)
        for kind, ids in probes:
            probe = stream_ttft(client, attacker_key, ids)
            (result.hits if kind == "hit" else result.misses).append(probe)
    return result
