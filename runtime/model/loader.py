"""Builds everything a model needs to run: weights, tokenizer, KV pools, attention, runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plait.kernels.select import make_attention_backend
from plait.radix_cache.cache_manager import CacheManager
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.runtime.errors import ModelNotFoundError
from plait.runtime.model.dummy_weights import init_dummy_weights
from plait.runtime.model.model_config import ModelConfig
from plait.runtime.model.model_runner import ModelRunner
from plait.runtime.model.model_source import resolve_model_path
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.weight_loader import load_weights
from plait.runtime.worker.stop import StopChecker

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Never size the pool below this, whatever the memory budget says.
_MIN_POOL_TOKENS = 256


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    model: LlamaForCausalLM
    tokenizer: Any | None
    kv: CacheManager
    runner: ModelRunner
    stop_checker: StopChecker
    context_len: int
    dtype: torch.dtype


def load_model(
    model_path: str | Path | None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    max_total_tokens: int | None = None,
    mem_fraction_static: float = 0.15,
    max_running_requests: int = 256,
    disable_radix_cache: bool = False,
    context_length: int | None = None,
    attention_backend: str = "auto",
    load_format: str = "auto",
) -> LoadedModel:
    """``load_format="dummy"`` takes only config.json from ``model_path`` and random weights
    (no checkpoint, no tokenizer needed)."""
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
    model = model.to(torch_dtype).to_empty(device=dev)
    model.model.rotary.build()  # not in the checkpoint
    if load_format == "dummy":
        init_dummy_weights(model)
    else:
        load_weights(model, path)
    model.eval()

    tokenizer = load_tokenizer(path)
    pool_tokens = max_total_tokens or _pool_tokens_from_budget(
        config, torch_dtype, dev, mem_fraction_static
    )
    kv_pool = TokenToKVPool(
        pool_tokens, config.num_layers, config.num_kv_heads, config.head_dim, torch_dtype, dev
    )
    req_pool = ReqToTokenPool(max_running_requests + 8, context_len + 8, dev)
    kv = CacheManager(req_pool, kv_pool, disable_radix_cache=disable_radix_cache)
    attn = make_attention_backend(attention_backend, config, dev)
    runner = ModelRunner(model, kv_pool, attn)
    stop_checker = StopChecker(tokenizer, _eos_ids(path, config, tokenizer), context_len)
    return LoadedModel(
        path, config, model, tokenizer, kv, runner, stop_checker, context_len, torch_dtype
    )


def _model_dir(model_path: str | Path | None, load_format: str) -> Path:
    if load_format == "dummy" and model_path is not None:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"load_format='dummy' needs {path / 'config.json'}")
        return path
    return resolve_model_path(model_path)


def load_tokenizer(path: Path) -> Any | None:
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _eos_ids(path: Path, config: ModelConfig, tokenizer: Any | None) -> set[int]:
    ids = set(config.eos_token_ids)
    gen = path / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


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
    return max(int(free * fraction) // per_token, _MIN_POOL_TOKENS)


def _available_host_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
