"""The flat batch one model forward runs on."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill of new tokens on top of an optional cached prefix
    DECODE = "decode"  # one new token per request


@dataclass(slots=True)
class ForwardBatch:
    """Inputs of one forward pass over a batch of requests.

    Tokens are laid out flat: request i owns ``extend_lens[i]`` consecutive entries of
    ``input_ids`` / ``positions`` / ``out_cache_loc``. After the forward, request i's KV for
    positions ``[0, seq_lens[i])`` lives in the pool at ``req_to_token[req_pool_indices[i], :seq_lens[i]]``;
    positions ``[prefix_lens[i], seq_lens[i])`` are the ones this forward writes (at ``out_cache_loc``).
    """

    mode: ForwardMode
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    out_cache_loc: torch.Tensor  # [N] int64 KV slots written by this forward
    req_pool_indices: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int64, prefix + extend
    prefix_lens_cpu: list[int]
    extend_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    req_to_token: torch.Tensor  # [max_reqs, max_context_len] the pool's table
    attn_metadata: Any = field(default=None)  # filled by the attention backend once per forward
    # CPU threads this forward's own kernels may use (the runner's choice; torch's own ops may
    # run on fewer while OpenBLAS or the fused step has the others); 0: torch's count
    cpu_threads: int = 0

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
