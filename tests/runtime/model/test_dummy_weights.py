"""load_format="dummy": a model shape from config.json alone, with random weights."""

from __future__ import annotations

import shutil

import pytest

from plait.runtime.engine import Engine
from plait.runtime.errors import ModelNotFoundError
from plait.runtime.model.model_config import ModelConfig


def test_dummy_weights_generate_from_a_config_alone(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir("llama") / "config.json", tmp_path / "config.json")
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    outs = []
    for _ in range(2):
        engine = Engine(str(tmp_path), load_format="dummy", max_total_tokens=512)
        outs.append(engine.generate(input_ids=[5, 6, 7], sampling_params=params)["output_ids"])
        engine.check_idle()
    assert len(outs[0]) == 8
    assert outs[0] == outs[1]  # seeded: the same random model each time


def test_dummy_weights_need_a_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        Engine(str(tmp_path), load_format="dummy")


def test_the_llama3_8b_bench_config_parses():
    from pathlib import Path

    cfg = ModelConfig.from_path(Path(__file__).parents[3] / "bench/configs/llama-3-8b")
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (32, 32, 8, 128)
