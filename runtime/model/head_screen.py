"""The head's int8 screen: a greedy row's token from a quarter of a float32 head's bytes.

A greedy decode step needs each row's argmax, not its logits. On a small model the head is a
large part of a step's reads (SmolLM2-135M: 113 MB of a float32 step's 538). The screen is the
head quantized as GGUF Q8_0 and packed for the int8 kernels, with two float32 bounds per vocab
row:

  err[j] >= max_i |w_ji - q_ji d_jb|          (the screen's weight error)
  l1[j]  >= max(sum_i |w_ji|, sum_i |q_ji d_jb|)

``kernels/cpu_decode.c`` (``screened_head``) turns them into a bound on each screened logit's
distance from the head's own, keeps the rows that can hold the maximum, and computes only those
exactly by the head's kernel; the rest are -inf. The argmax, the first of tied maxima, is the
full head's, bit for bit: the screen changes which logits are computed, never a token.

Invariants: built only for a float32 or bfloat16 ``Linear`` head with finite weights, whose
vocab is a multiple of 16 and hidden size of 32, where the library has the packed int8 kernels
(AVX512_VNNI or AVX2); the bounds are rounded up from float64 sums of the exact weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.kernels import cpu_decode
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.quant_linear import quantize_q8_0
from plait.runtime.model.product_weights import ProductWeights

_ROWS_AT_ONCE = 4096  # float64 work on this many vocab rows at a time (~19 MB at 576 wide)


@dataclass(slots=True)
class HeadScreen:
    weights: ProductWeights  # DT_I8PH (float16 scales: Q8_0's are float16 values)
    err: torch.Tensor  # float32 [vocab]
    l1: torch.Tensor  # float32 [vocab]


def _rounded_up(t: torch.Tensor) -> torch.Tensor:
    """float64 -> the least float32 at or above each value."""
    f = t.float()
    return torch.where(f.double() < t, torch.nextafter(f, torch.tensor(float("inf"))), f)


def build(head: torch.nn.Module, packed: bool) -> HeadScreen | None:
    """The screen of ``head``, or None where it has none (see the module's invariants)."""
    if not packed or not isinstance(head, Linear) or head.transposed:
        return None
    w = head.weight.detach()
    if w.dtype not in (torch.float32, torch.bfloat16):
        return None
    vocab, hidden = w.shape
    if vocab % 16 or hidden % 32 or not bool(torch.isfinite(w).all()):
        return None
    q, d = quantize_q8_0(w)
    if not bool(torch.isfinite(d).all()):
        return None  # a block past float16's range
    err = torch.empty(vocab, dtype=torch.float64)
    l1 = torch.empty(vocab, dtype=torch.float64)
    for lo in range(0, vocab, _ROWS_AT_ONCE):
        hi = min(lo + _ROWS_AT_ONCE, vocab)
        exact = w[lo:hi].double()
        screened = (q[lo:hi].double().view(hi - lo, -1, 32) * d[lo:hi, :, None].double()).view(
            hi - lo, hidden
        )
        err[lo:hi] = (exact - screened).abs().amax(1)
        l1[lo:hi] = torch.maximum(exact.abs().sum(1), screened.abs().sum(1))
    codes, scales = cpu_decode.pack_i8_vnni(q, d, half=True)
    weights = ProductWeights(cpu_decode.DT_I8PH, (codes, scales, None), [head.weight])
    return HeadScreen(weights, _rounded_up(err), _rounded_up(l1))
