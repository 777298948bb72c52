"""``quantization=int8|int4``: the loader swaps the linear layers, the engine serves with them."""

from __future__ import annotations

import pytest
import torch

from plait.runtime.config import EngineConfig
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model.loader import load_model
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.quant_linear import Int4Linear, Int8Linear


@pytest.mark.parametrize("quantization, layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_loader_quantizes_every_linear_and_keeps_its_function(tiny_model_dir, quantization, layer):
    path = tiny_model_dir("llama")
    dense = load_model(path).model
    quant = load_model(path, quantization=quantization).model
    assert not any(isinstance(m, Linear) for m in quant.modules())
    assert isinstance(quant.lm_head, Int8Linear)
    assert all(isinstance(b.self_attn.qkv_proj, layer) for b in quant.model.layers)
    torch.manual_seed(0)
    for name in ("self_attn.qkv_proj", "mlp.gate_up_proj", "self_attn.o_proj", "mlp.down_proj"):
        d, q = dense.model.layers[1].get_submodule(name), quant.model.layers[1].get_submodule(name)
        x = torch.randn(3, q.in_features)
        ref, got = d(x), q(x)
        err = (got - ref).norm() / ref.norm()
        assert err < (0.02 if quantization == "int8" else 0.15), (name, float(err))


def test_engine_serves_quantized(tiny_model_dir):
    engine = Engine(tiny_model_dir("llama"), quantization="int4", max_total_tokens=512)
    out = engine.generate(input_ids=[[5, 6, 7, 8]], sampling_params={"max_new_tokens": 4})
    assert len(out[0]["output_ids"]) == 4
    engine.check_idle()


def test_an_unknown_quantization_is_refused_by_name():
    with pytest.raises(InvalidRequestError) as e:
        EngineConfig.from_kwargs(None, quantization="int3")
    assert e.value.field == "quantization"
