"""The engine's greedy output with the Triton kernels equals its output with the torch kernels."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from plait.runtime.engine import Engine  # noqa: E402

PROMPTS = [[5, 6, 7], [11] * 9, list(range(20, 45)), [300, 1, 77, 42, 9, 10, 11]]


def test_triton_and_torch_kernels_give_the_same_greedy_output(tiny_model_dir):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    outs = {}
    for backend in ("torch", "triton"):
        engine = Engine(
            tiny_model_dir("llama"),
            device=device,
            max_total_tokens=512,
            chunked_prefill_size=8,
            attention_backend=backend,
        )
        outs[backend] = [
            o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=params)
        ]
        engine.check_idle()
    assert outs["triton"] == outs["torch"]
