"""The fused step's argmax (``argmax_rows`` in kernels/cpu_decode.c), which a greedy batch's
tokens come from: numpy's ``argmax`` (the sampler's on the CPU) on every row, ties, NaNs and
infinities included, at any row length."""

from __future__ import annotations

import numpy as np
import pytest

from plait.kernels import cpu_decode

lib = cpu_decode.library()
pytestmark = pytest.mark.skipif(lib is None, reason="no C compiler: the fused step is off")


def _c_argmax(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.full(rows.shape[0], -1, dtype=np.int64)
    lib.plait_argmax_rows(rows.ctypes.data, rows.shape[0], rows.shape[1], out.ctypes.data)
    return out


@pytest.mark.parametrize("vocab", [1, 7, 16, 17, 49, 320, 49152])
def test_random_rows(vocab):
    rows = np.random.default_rng(vocab).standard_normal((5, vocab)).astype(np.float32)
    assert _c_argmax(rows).tolist() == rows.argmax(-1).tolist()


@pytest.mark.parametrize("vocab", [5, 16, 33, 1000])
def test_ties_nans_and_infinities(vocab):
    rng = np.random.default_rng(vocab)
    base = rng.standard_normal(vocab).astype(np.float32)
    cases = []
    for where in {0, 1, vocab // 2, vocab - 1}:
        row = base.copy()
        row[where] = row.max()  # a tie at ``where`` and at the old maximum
        cases.append(row)
        row = base.copy()
        row[where] = np.nan
        cases.append(row)
        row = base.copy()
        row[where] = np.inf
        row[vocab - 1 - where] = np.inf
        cases.append(row)
        row = np.full(vocab, -np.inf, dtype=np.float32)
        row[where] = 0.0
        cases.append(row)
    two_nans = base.copy()
    two_nans[[vocab // 3, vocab - 1]] = np.nan
    cases += [two_nans, np.full(vocab, -np.inf, dtype=np.float32), np.zeros(vocab, np.float32)]
    rows = np.stack(cases)
    assert _c_argmax(rows).tolist() == rows.argmax(-1).tolist()
