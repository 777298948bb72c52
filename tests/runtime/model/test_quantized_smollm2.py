"""int8 / int4 on the real default model: the GGUF's Q4_1 and Q8_0 blocks load as stored, and
greedy decoding stays close to float32 (thresholds from bench/bench_quant_accuracy.py, with
margin)."""

from __future__ import annotations

import pytest
import torch

from plait.runtime.engine import Engine
from plait.runtime.model.gguf_quant import GGUFWeights
from plait.runtime.model.model_source import default_gguf_path

PROMPTS = [
    "The capital of France is",
    "Q: What is 12 times 7?\nA: 84\nQ: What is 9 times 8?\nA:",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who had never once left the valley. Every morning he",
    "<|im_start|>user\nExplain why the sky is blue.<|im_end|>\n<|im_start|>assistant\n",
]
NEW = 16
# teacher-forced top-1 agreement with float32 along float32's greedy continuation, at least
# (measured 97.3% for int4 and 96.3% for int8 on 8 prompts x 24 tokens; int8 runs in the bench
# only, to keep the suite short: its mechanics are tested on the tiny model)
MIN_TOP1 = {"int4": 0.85, "int8": 0.85}


def test_q4_1_blocks_load_exactly():
    gguf = GGUFWeights(default_gguf_path())
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.7.mlp.down_proj.weight"):
        assert gguf.is_four_bit(name)
        g = gguf.int4_groups(name)
        dense = gguf.dense(name)
        rows = dense.shape[0]
        rebuilt = g.codes.float().view(rows, -1, 32) * g.scale[..., None] + g.low[..., None]
        assert torch.equal(rebuilt.view_as(dense), dense)


def test_q8_0_head_loads_exactly():
    """The tied embedding is Q8_0 in the default GGUF: the head of both quantized modes holds its
    codes and scales as stored (its float32 weight is codes times scales, exactly)."""
    from plait.runtime.model.models.quant_linear import Int8Linear

    gguf = GGUFWeights(default_gguf_path())
    name = "model.embed_tokens.weight"
    assert gguf.is_q8_0(name)
    blocks = gguf.int8_blocks(name)
    head = Int8Linear(blocks.codes, blocks.scale)
    assert torch.equal(head.dequantized(), gguf.dense(name))


@pytest.fixture(scope="module")
def float32_greedy():
    engine = Engine(None, max_total_tokens=4096)
    outs = engine.generate(PROMPTS, {"max_new_tokens": NEW, "temperature": 0})
    return [engine.tokenizer.encode(p) for p in PROMPTS], [o["output_ids"] for o in outs]


@pytest.mark.parametrize("quantization", ["int4"])
def test_quantized_greedy_agrees_with_float32(float32_greedy, quantization):
    prompts, reference = float32_greedy
    engine = Engine(None, max_total_tokens=4096, quantization=quantization)
    params = [
        {
            "max_new_tokens": 1,
            "temperature": 0,
            "return_logprob": True,
            "logprob_start_len": len(p) - 1,
            "top_logprobs_num": 1,
        }
        for p in prompts
    ]
    runs = engine.generate(
        input_ids=[p + r for p, r in zip(prompts, reference)], sampling_params=params
    )
    hits = 0
    for run, ref in zip(runs, reference):
        # row i is the distribution over the token at logprob_start_len + i
        top = run["meta_info"]["input_top_logprobs"][1 : len(ref) + 1]
        hits += sum(row[0][1] == r for row, r in zip(top, ref))
    agreement = hits / sum(len(r) for r in reference)
    assert agreement >= MIN_TOP1[quantization], agreement
    out = engine.generate(PROMPTS[0], {"max_new_tokens": 4, "temperature": 0})
    assert "Paris" in out["text"]
    engine.check_idle()
