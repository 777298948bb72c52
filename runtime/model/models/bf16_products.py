"""bfloat16 products of many rows on a CPU without bfloat16 arithmetic.

Where the CPU multiplies bfloat16 natively (AVX512_BF16, AMX; ``native_bf16``), torch's
bfloat16 GEMM is its fastest product. Without it (AVX2 alone: Zen 2 / 3, Intel client cores)
oneDNN emulates each bfloat16 multiply, and a product of many rows (a prefill) ran at a
fraction of float32's GEMM (bench/RESULTS.md, issue 15): there ``linear`` widens both operands
to float32 (exact), multiplies in float32 and rounds the result to bfloat16 once. Its values
are at least as precise as the emulated kernel's, which rounds the same products.

Invariant: the result has ``x``'s dtype and shape ``[*x.shape[:-1], out]``, whichever way.
"""

from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F

from plait.kernels import cpu_decode

# CPU flags (Linux /proc/cpuinfo) with bfloat16 multiplies torch's GEMM uses
_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic torch's GEMM uses (True where unknown)."""
    flags = cpu_decode.cpu_flags()
    if flags is None:
        return platform.machine() not in ("x86_64", "AMD64")
    return any(f in flags for f in _NATIVE_FLAGS)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for bfloat16 ``x`` and ``weight``; in float32 on a CPU
    without bfloat16 arithmetic."""
    if x.device.type != "cpu" or native_bf16():
        return F.linear(x, weight, bias)
    b = None if bias is None else bias.float()
    return F.linear(x.float(), weight.float(), b).to(x.dtype)
