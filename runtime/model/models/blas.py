"""Float32 matrix products on the CPU through OpenBLAS, the BLAS numpy ships.

torch's CPU wheels multiply float32 with MKL, which on AMD CPUs takes a generic code path: on
this box (AMD EPYC, avx512) OpenBLAS is faster at every size the model runs, and its
matrix-vector product uses every thread where MKL's runs on one (bench/RESULTS.md, issue 15:
the 121 decode products of SmolLM2-135M take 35 ms with MKL at 1 or 2 threads, 22 ms with
OpenBLAS at 2; a 512-token prefill's 1.23 s against 0.93 s).

Two thread pools must not be busy at once on a small box: torch's OpenMP workers spin after
each op while OpenBLAS's run, and the other way round (measured: a decode step 7x slower).
So a forward whose products go here runs torch's own ops on one thread and gives its thread
budget to OpenBLAS (``ModelRunner``).

Bits: OpenBLAS splits a product by rows and columns, never along the summed dimension, so
results are the same at any thread count (a test checks); they differ from MKL's in the last
bits (the greedy outputs against transformers, which uses MKL, are tested).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from plait.runtime.errors import InvalidRequestError


class OpenBLAS:
    """numpy's OpenBLAS: its thread count, set only when it changes."""

    def __init__(self, controller: object) -> None:
        self._controller = controller
        self._threads: int | None = None

    def set_threads(self, n: int) -> None:
        if n != self._threads:
            self._controller.limit(limits=n)  # type: ignore[attr-defined]
            self._threads = n


@functools.cache
def numpy_openblas() -> OpenBLAS | None:
    """The OpenBLAS numpy multiplies with, or None when numpy's BLAS is another library or
    threadpoolctl cannot reach it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # loads numpy's BLAS
    selected = ThreadpoolController().select(internal_api="openblas")
    if not selected.lib_controllers:
        return None
    return OpenBLAS(selected)


# ``auto`` takes OpenBLAS for models whose float32 products stream at least this many weight
# bytes per forward: products that miss the caches, where its faster streaming pays. Smaller
# models (the suite's tiny ones) are latency-bound per call: numpy's conversions and the thread
# switch around each forward would cost more than they save.
AUTO_MIN_WEIGHT_BYTES = 64 << 20


def resolve(choice: str, device: torch.device, weight_bytes: int) -> OpenBLAS | None:
    """The OpenBLAS to use for ``choice`` on ``device`` (None: torch's own products), for a
    model with ``weight_bytes`` of float32 linear weights. ``openblas`` where it is not
    available raises InvalidRequestError naming the option."""
    if choice == "torch" or device.type != "cpu":
        return None
    if choice == "auto" and weight_bytes < AUTO_MIN_WEIGHT_BYTES:
        return None
    blas = numpy_openblas()
    if blas is None and choice == "openblas":
        raise InvalidRequestError(
            "float32_matmul", "openblas needs numpy built with OpenBLAS, and threadpoolctl"
        )
    return blas


def matmul(x: torch.Tensor, weight: np.ndarray, transposed: bool) -> torch.Tensor:
    """``x @ weight`` (``transposed``: weight is ``[in, out]``) or ``x @ weight.T`` (``[out,
    in]``) for a float32 CPU ``x`` of any leading shape; a new float32 tensor."""
    lead = x.shape[:-1]
    xn = x.reshape(-1, x.shape[-1]).numpy()
    y = xn @ weight if transposed else xn @ weight.T
    return torch.from_numpy(y).reshape(*lead, y.shape[-1])
