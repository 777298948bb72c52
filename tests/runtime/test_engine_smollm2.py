"""The engine on the real default model against transformers, token for token (float32, greedy)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from plait.runtime.engine import Engine
from plait.runtime.model.model_source import resolve_model_path

PROMPTS = [
    "Hi",
    "The capital of France is",
    "List three colors:",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Translate to French: The cat sits on the mat, and the dog sleeps under the table.",
    "Q: What is 12 times 7?\nA: 84\nQ: What is 9 times 8?\nA:",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who had never once left the valley. Every morning he",
    "<|im_start|>user\nExplain in two sentences why the sky is blue, for a curious child who "
    "keeps asking questions about everything they see outside.<|im_end|>\n<|im_start|>assistant\n",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def model_dir():
    return resolve_model_path(None)


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, outs = [], []
    for p in PROMPTS:
        x = tok(p, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            seq = hf.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False
            )
        ids.append(x[0].tolist())
        outs.append(seq[0, x.shape[1] :].tolist())
    return ids, outs


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(model_dir, max_total_tokens=8192, chunked_prefill_size=16)


def test_batched_greedy_matches_transformers_token_for_token(engine, reference):
    ids, ref = reference
    assert len({len(x) for x in ids}) == len(ids), "prompts must have different lengths"
    assert max(len(x) for x in ids) > 16, "some prompt must be longer than a chunk"
    outs = engine.generate(PROMPTS, {"max_new_tokens": MAX_NEW, "temperature": 0})
    assert [o["output_ids"] for o in outs] == ref
    engine.check_idle()


def test_with_cached_prefixes_output_is_unchanged(engine, reference):
    ids, ref = reference
    engine.generate(PROMPTS[:4], {"max_new_tokens": 4, "temperature": 0})  # warm part of the tree
    outs = engine.generate(PROMPTS, {"max_new_tokens": MAX_NEW, "temperature": 0})
    assert [o["output_ids"] for o in outs] == ref
    # a prompt reuses all but its last token (which must be computed to give logits)
    assert [o["meta_info"]["cached_tokens"] for o in outs[:4]] == [len(x) - 1 for x in ids[:4]]
    engine.check_idle()


def test_text_is_the_detokenized_output(engine, reference):
    _, ref = reference
    out = engine.generate(PROMPTS[1], {"max_new_tokens": MAX_NEW, "temperature": 0})
    assert out["output_ids"] == ref[1]
    assert out["text"] == engine.tokenizer.decode(ref[1], skip_special_tokens=True)
    assert "Paris" in out["text"]
