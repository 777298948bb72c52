"""CPU tensors laid out in one anonymous memory mapping, in order, each on its own cache line.

The kernel backs a page of an anonymous mapping with zeros when it is first touched: tensors
made here read as zeros and cost neither time nor memory until written (``torch.zeros`` writes
every page up front). The KV pool takes its buffers this way, and ``huge_pages`` the arena it
copies the weights into, both advised ``MADV_HUGEPAGE`` where Linux offers huge pages.

Invariant: every tensor is contiguous, starts on a multiple of ``ALIGN`` bytes (the first on a
``HUGE_PAGE`` boundary when huge pages were asked for and are available), and none overlaps
another; the mapping lives as long as any tensor on it (each holds the buffer).
"""

from __future__ import annotations

import functools
import mmap
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
ALIGN = 64  # each tensor starts on a cache line
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def huge_pages_available() -> bool:
    """Whether advising a mapping ``MADV_HUGEPAGE`` can give it huge pages here (Linux with
    THP in ``always`` or ``madvise`` mode)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = _THP_MODE.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def mapped_tensors(
    specs: list[tuple[tuple[int, ...], torch.dtype]], huge_pages: bool = False
) -> list[torch.Tensor]:
    """Zero tensors of the (shape, dtype) ``specs``, in one anonymous mapping; ``huge_pages``
    advises it ``MADV_HUGEPAGE`` and starts the tensors on a huge page (the kernel backs only
    2 MiB-aligned ranges with them), where Linux offers them (``huge_pages_available``)."""
    huge_pages = huge_pages and huge_pages_available()
    sizes = [torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in specs]
    offsets, end = [], 0
    for nbytes in sizes:
        offsets.append(end)
        end = _round_up(end + nbytes, ALIGN)
    size = _round_up(end, HUGE_PAGE) + HUGE_PAGE if huge_pages else max(end, 1)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge_pages:
        region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    skip = -raw.data_ptr() % HUGE_PAGE if huge_pages else 0
    out = []
    for (shape, dtype), off, nbytes in zip(specs, offsets, sizes):
        out.append(raw[skip + off : skip + off + nbytes].view(dtype).view(shape))
    return out
