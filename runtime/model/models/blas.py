"""Float32 matrix products on the CPU through OpenBLAS, the BLAS numpy ships.

torch's CPU wheels multiply float32 with MKL, which on AMD CPUs takes a generic code path: on
an AMD EPYC (avx512) OpenBLAS was faster at every size the model runs, and its matrix-vector
product uses every thread where MKL's runs on one (bench/RESULTS.md, issue 15: the 121 decode
products of SmolLM2-135M took 35 ms with MKL at 1 or 2 threads, 22 ms with OpenBLAS at 2; a
512-token prefill's 1.23 s against 0.93 s). On Intel CPUs MKL takes its own best path, and
there ``auto`` keeps it: a 2-core Xeon with AMX ran the prefills of 32 distinct prompts in
3.6-3.9 s with MKL against 5.0-5.1 with OpenBLAS (``bench_batch_phases.py``, 2026-12-05).

Two thread pools must not be busy at once on a small box: torch's OpenMP workers spin after
each op while OpenBLAS's run, and the other way round (measured: a decode step 7x slower).
So a forward whose products go here runs torch's own ops on one thread and gives its thread
budget to OpenBLAS (``ModelRunner``).

Bits: OpenBLAS's own threads do not keep a product's bits at every thread count (on a Zen 3
its Haswell kernels gave 1 and 2 threads different bits from 16 rows up). So OpenBLAS runs one
thread a call here, and ``matmul`` splits a product into column blocks of a fixed width
(``COLUMN_BLOCK``) that ``threads`` threads of plait's own take in turn: every output is one
single-threaded call's, the same whatever the thread count (a test checks). Results differ
from MKL's in the last bits (the greedy outputs against transformers, which uses MKL, are
tested).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from plait.kernels.cpu_decode import intel_cpu  # where MKL runs its own kernels
from plait.runtime.errors import InvalidRequestError

# The columns a single-threaded OpenBLAS call computes: wide enough that each call's packing
# of the activations is small against its product, narrow enough that 2-8 threads share the
# model's products (576 to 49152 columns) evenly.
COLUMN_BLOCK = 256


class OpenBLAS:
    """numpy's OpenBLAS held at one thread a call, and the ``threads`` (``set_threads``) that
    ``map`` spreads a product's column blocks over: the caller's own thread and workers of one
    pool, kept for the process (the thread policy switches a forward between 1 and 2 threads;
    a switch starts no thread)."""

    def __init__(self, controller: object) -> None:
        self._controller = controller
        self._limited = False
        self._threads = 1
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0

    def _limit(self) -> None:
        if not self._limited:
            self._controller.limit(limits=1)  # type: ignore[attr-defined]
            self._limited = True

    @property
    def threads(self) -> int:
        return self._threads

    def set_threads(self, n: int) -> None:
        """The threads the next ``map`` calls use (at least 1)."""
        self._limit()
        self._threads = max(1, n)

    def map(self, fn: Callable[[int], None], items: list[int]) -> None:
        """``fn`` over every item once, on up to ``threads`` threads (the caller's among them),
        each taking the next item left; returns when all are done."""
        self._limit()
        n = min(self._threads, len(items))
        if n <= 1:
            for item in items:
                fn(item)
            return
        if self._workers < n - 1:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix="plait-blas")
            self._workers = n - 1
        assert self._pool is not None
        left = iter(items)  # one list iterator: each next() is atomic under the GIL

        def drain() -> None:
            for item in left:
                fn(item)

        helpers = [self._pool.submit(drain) for _ in range(n - 1)]
        drain()
        for f in helpers:
            f.result()


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
    model with ``weight_bytes`` of float32 linear weights. ``auto`` keeps torch's MKL on Intel
    CPUs and for small models. ``openblas`` where it is not available raises
    InvalidRequestError naming the option."""
    if choice == "torch" or device.type != "cpu":
        return None
    if choice == "auto" and (weight_bytes < AUTO_MIN_WEIGHT_BYTES or intel_cpu()):
        return None
    blas = numpy_openblas()
    if blas is None and choice == "openblas":
        raise InvalidRequestError(
            "float32_matmul", "openblas needs numpy built with OpenBLAS, and threadpoolctl"
        )
    return blas


def matmul(x: torch.Tensor, weight: np.ndarray, transposed: bool) -> torch.Tensor:
    """``x @ weight`` (``transposed``: weight is ``[in, out]``) or ``x @ weight.T`` (``[out,
    in]``) for a float32 CPU ``x`` of any leading shape; a new float32 tensor. Column blocks of
    ``COLUMN_BLOCK`` on numpy's OpenBLAS's threads (``set_threads``; one thread where none was
    set): the same bits at any thread count."""
    lead = x.shape[:-1]
    xn = x.reshape(-1, x.shape[-1]).numpy()
    n_out = weight.shape[1] if transposed else weight.shape[0]
    y = np.empty((xn.shape[0], n_out), np.float32)

    def block(c0: int) -> None:
        c1 = min(c0 + COLUMN_BLOCK, n_out)
        w = weight[:, c0:c1] if transposed else weight[c0:c1].T
        y[:, c0:c1] = xn @ w

    blas = numpy_openblas()
    starts = list(range(0, n_out, COLUMN_BLOCK))
    if blas is None:
        for c0 in starts:
            block(c0)
    else:
        blas.map(block, starts)
    return torch.from_numpy(y).reshape(*lead, n_out)
