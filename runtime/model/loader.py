"""Loads a model: its config, weights (checkpoint or dummy), tokenizer and EOS ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.errors import ModelNotFoundError
from plait.runtime.model.dummy_weights import init_dummy_weights
from plait.runtime.model.gguf_quant import GGUFWeights
from plait.runtime.model.model_config import ModelConfig
from plait.runtime.model.model_source import default_gguf_path, resolve_model_path
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.quantize import quantize_model
from plait.runtime.model.weight_loader import load_weights
from plait.runtime.tokenizer import load_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Never size the pool below this, whatever the memory budget says.
_MIN_POOL_TOKENS = 256


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    model: LlamaForCausalLM
    tokenizer: Any | None
    eos_token_ids: set[int]
    context_len: int
    dtype: torch.dtype
    device: torch.device


def load_model(
    model_path: str | Path | None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    context_length: int | None = None,
    load_format: str = "auto",
    quantization: str | None = None,
) -> LoadedModel:
    """``load_format="dummy"`` takes only config.json from ``model_path`` and random weights
    (no checkpoint, no tokenizer needed). ``quantization`` ("int8" / "int4") swaps the linear
    layers for weight-only quantized ones, from a GGUF source's own 4-bit blocks where it has
    them (see ``quantize.py``); the rest of the model keeps ``dtype``."""
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
    path = _model_dir(model_path, load_format)
    torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    config = ModelConfig.from_path(path)
    context_len = min(
        context_length or config.max_position_embeddings, config.max_position_embeddings
    )
    dev = torch.device(device)

    with torch.device("meta"):
        model = LlamaForCausalLM(config, torch_dtype)
    _materialize(model, torch_dtype, dev)
    model.model.rotary.build()  # not in the checkpoint
    if load_format == "dummy":
        init_dummy_weights(model)
    else:
        load_weights(model, path)
    if quantization is not None:
        if dev.type != "cpu":
            raise ValueError(f"quantization={quantization!r} runs on CPU only, device is {dev}")
        gguf = _gguf_source(model_path, load_format)
        quantize_model(model, quantization, GGUFWeights(gguf) if gguf is not None else None)
    model.eval()
    tokenizer = load_tokenizer(path)
    eos = _eos_ids(path, config, tokenizer)
    return LoadedModel(path, config, model, tokenizer, eos, context_len, torch_dtype, dev)


def _materialize(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Gives every meta parameter and buffer uninitialized storage on ``device``, floating point
    ones in ``dtype`` (what ``.to(dtype).to_empty(device)`` does, shared tensors stay shared),
    without ``empty_like`` on meta tensors: that runs through ``torch._refs`` and imports the
    symbolic-shapes machinery, a second per worker start."""
    made: dict[int, torch.Tensor] = {}

    def empty(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            kind = dtype if t.is_floating_point() else t.dtype
            made[id(t)] = torch.empty(tuple(t.shape), dtype=kind, device=device)
        return made[id(t)]

    params: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                if id(param) not in params:
                    params[id(param)] = torch.nn.Parameter(empty(param), param.requires_grad)
                module._parameters[name] = params[id(param)]
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = empty(buf)


def _model_dir(model_path: str | Path | None, load_format: str) -> Path:
    if load_format == "dummy" and model_path is not None:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"load_format='dummy' needs {path / 'config.json'}")
        return path
    return resolve_model_path(model_path)


def _gguf_source(model_path: str | Path | None, load_format: str) -> Path | None:
    """The GGUF file the weights came from, or None (a Hugging Face directory, dummy weights)."""
    if load_format == "dummy":
        return None
    if model_path is None:
        return default_gguf_path()
    path = Path(model_path).expanduser()
    return path if path.is_file() and path.suffix == ".gguf" else None


def _eos_ids(path: Path, config: ModelConfig, tokenizer: Any | None) -> set[int]:
    ids = set(config.eos_token_ids)
    gen = path / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def kv_pool_tokens(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, fraction: float
) -> int:
    """KV pool size in tokens from a fraction of the device's free memory."""
    return max(_pool_tokens_from_budget(config, dtype, device, fraction), _MIN_POOL_TOKENS)


def _pool_tokens_from_budget(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, fraction: float
) -> int:
    per_token = TokenToKVPool.kv_bytes_per_token(
        config.num_layers, config.num_kv_heads, config.head_dim, dtype
    )
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_host_memory()
    return int(free * fraction) // per_token


def _available_host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
