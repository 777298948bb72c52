"""Converts a llama-family GGUF file into a Hugging Face model directory (dequantized safetensors)."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file
from tqdm import tqdm

# GGUF architecture -> (model_type, HF class). llama.cpp stores Mistral GGUFs as "llama".
SUPPORTED_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
}
# llama.cpp's convert script interleaves q/k rows for its rope layout on these only.
ROPE_PERMUTED_ARCHITECTURES = ("llama", "mistral")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_TENSOR = re.compile(r"blk\.(?P<layer>\d+)\.(?P<kind>\w+)\.(?P<param>weight|bias)")

# Llama 3.x rope scalings seen in practice; llama.cpp keeps only the resulting per-dim divisors.
_LLAMA3_ROPE_CANDIDATES = [
    {
        "factor": f,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    for f in (8.0, 32.0, 16.0, 4.0)
]


def convert_gguf(
    gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype | str = torch.float32
) -> Path:
    """Writes ``out_dir`` with config.json, generation_config.json, model.safetensors, tokenizer.

    The directory appears atomically (built under a sibling temp dir, then renamed), so a killed
    conversion never leaves a partial ``out_dir``. Raises FileExistsError if ``out_dir`` exists.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as 'float32', got {dtype!r}")
    if out_dir.exists():
        raise FileExistsError(f"conversion target already exists: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(out_dir)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-", dir=out_dir.parent)
    )
    try:
        reader = GGUFReader(gguf_path)
        config = _build_config(reader, dtype)
        tensors = _convert_tensors(reader, config, dtype, desc=f"converting {gguf_path.name}")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        _save_tokenizer(gguf_path, reader, tmp, config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp (and safetensors) make owner-only entries
        (tmp / "model.safetensors").chmod(0o644)
        try:
            tmp.rename(out_dir)
        except OSError as e:
            if out_dir.exists():
                raise FileExistsError(f"conversion target appeared meanwhile: {out_dir}") from e
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _remove_abandoned_partials(out_dir: Path) -> None:
    for partial in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.partial-*"):
        pid = int(partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0])
        if not _pid_alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _f32(value: float) -> float:
    # GGUF stores float32; write the shortest decimal of that float32 (1e-05, not 9.99999974e-06).
    return float(str(np.float32(value)))


def _build_config(reader: GGUFReader, dtype: torch.dtype) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"general.architecture {arch!r} is not supported; supported: {list(SUPPORTED_ARCHITECTURES)}"
        )
    model_type, hf_class = SUPPORTED_ARCHITECTURES[arch]
    tensor_names = {t.name for t in reader.tensors}
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    num_kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", num_heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // num_heads))
    rope_theta = _f32(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    context = int(_field(reader, f"{arch}.context_length"))
    dtype_name = str(dtype).removeprefix("torch.")
    config: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": model_type,
        "vocab_size": int(embed.shape[1]),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": _f32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }
    scaling_type = _field(reader, f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        config["rope_parameters"] = {
            "rope_type": scaling_type,
            "rope_theta": rope_theta,
            "factor": _f32(_field(reader, f"{arch}.rope.scaling.factor", 1.0)),
            "original_max_position_embeddings": int(
                _field(reader, f"{arch}.rope.scaling.original_context_length", context)
            ),
        }
    if model_type == "mistral":
        config["sliding_window"] = _field(reader, f"{arch}.attention.sliding_window")
    return config


def _convert_tensors(
    reader: GGUFReader, config: dict[str, Any], dtype: torch.dtype, desc: str
) -> dict[str, torch.Tensor]:
    arch = _field(reader, "general.architecture")
    permuted = arch in ROPE_PERMUTED_ARCHITECTURES
    tensors: dict[str, torch.Tensor] = {}
    for tensor in tqdm(reader.tensors, desc=desc, unit="tensor"):
        # [out_features, in_features] in numpy order (GGUF lists dims innermost first)
        weights = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if tensor.name == "rope_freqs.weight":
            config["rope_parameters"] = _llama3_rope_parameters(weights, config)
            continue
        name = _hf_name(tensor.name)
        if permuted and ".attn_q." in tensor.name:
            weights = _reverse_rope_permute(weights, config["num_attention_heads"])
        elif permuted and ".attn_k." in tensor.name:
            weights = _reverse_rope_permute(weights, config["num_key_value_heads"])
        tensors[name] = torch.from_numpy(np.require(weights, np.float32, ["C", "W"])).to(dtype)
    return tensors


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_TENSOR.fullmatch(gguf_name)
    if match is None or match["kind"] not in _BLOCK_NAMES:
        raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face Llama equivalent")
    return f"model.layers.{match['layer']}.{_BLOCK_NAMES[match['kind']]}.{match['param']}"


def _reverse_rope_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp: w.reshape(n_head, 2, dim, ...).swapaxes(1, 2); rows are [n_head * dim * 2, ...]
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def _llama3_rope_parameters(freq_divisors: np.ndarray, config: dict[str, Any]) -> dict[str, Any]:
    """Recovers Llama 3 rope scaling from llama.cpp's per-dimension frequency divisors."""
    theta, head_dim = config["rope_theta"], config["head_dim"]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    for params in _LLAMA3_ROPE_CANDIDATES:
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_context = params["original_max_position_embeddings"]
        smooth = np.clip((old_context / wavelen - low) / (high - low), 0.0, 1.0)
        expected = 1.0 / ((1 - smooth) / factor + smooth)
        if np.allclose(freq_divisors, expected, rtol=1e-3):
            return {"rope_type": "llama3", "rope_theta": theta, **params}
    raise ValueError("rope_freqs.weight does not match any known Llama 3 rope scaling")


def _save_tokenizer(
    gguf_path: Path, reader: GGUFReader, out_dir: Path, config: dict[str, Any]
) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    chat_template = _field(reader, "tokenizer.chat_template")
    if chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out_dir))
    GenerationConfig(
        bos_token_id=config["bos_token_id"],
        eos_token_id=config["eos_token_id"],
        pad_token_id=config["pad_token_id"],
    ).save_pretrained(str(out_dir))
