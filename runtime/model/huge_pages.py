"""A CPU model's weights on transparent huge pages (2 MiB) where Linux offers them.

Decode streams every weight once a step. On 4 KiB pages that is a TLB miss every 64 cache
lines; reading a 538 MB float32 buffer on 2 threads of a 2-core Zen 3 went 20.4-24.1 GB/s on
4 KiB pages against 21.6-24.6 on huge pages, the same buffer alternating (bench/RESULTS.md,
issue 15). torch allocates with malloc, which never asks for huge pages, and this host's THP
mode is ``madvise``: nothing gets them unasked. ``adopt_parameters`` copies a module's large
parameters into one anonymous mapping advised ``MADV_HUGEPAGE`` and points each parameter
there (``param.data``: the same Parameter objects, so tied weights stay tied).

Invariant: every adopted tensor keeps its values, dtype, shape and strides (made contiguous);
the mapping lives as long as any tensor on it (each holds the buffer).
"""

from __future__ import annotations

import torch

from plait.runtime.mapped_tensors import ALIGN, HUGE_PAGE, mapped_tensors
from plait.runtime.mapped_tensors import huge_pages_available as available

__all__ = ["ALIGN", "HUGE_PAGE", "MIN_BYTES", "adopt_parameters", "available", "place"]

MIN_BYTES = 1 << 20  # smaller tensors (norms, biases) stay where they are


def place(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` (CPU, any dtypes) laid out in one huge-page mapping, in order."""
    out = mapped_tensors([(tuple(t.shape), t.dtype) for t in tensors], huge_pages=True)
    for view, t in zip(out, tensors):
        view.copy_(t)
    return out


def adopt_parameters(module: torch.nn.Module) -> int:
    """Moves ``module``'s CPU parameters of at least ``MIN_BYTES`` onto huge pages; returns
    the bytes moved (0 where huge pages are not available)."""
    if not available():
        return 0
    chosen = [  # parameters() lists a tied parameter once
        p
        for p in module.parameters()
        if p.device.type == "cpu" and p.numel() * p.element_size() >= MIN_BYTES
    ]
    if not chosen:
        return 0
    with torch.no_grad():
        for p, moved in zip(chosen, place([p.detach() for p in chosen])):
            p.data = moved
    return sum(p.numel() * p.element_size() for p in chosen)
