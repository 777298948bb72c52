"""bfloat16 products by AMX (``amx_bf16_rows`` in ``kernels/cpu_decode.c``), where the CPU has
it: as close to float64 as the vector kernels, a row's bits the same alone and in any batch on
any thread count, and the rows past the last whole 16-row block the vector kernels' own."""

from __future__ import annotations

import pytest
import torch

from plait.kernels import cpu_decode

LIB = cpu_decode.library()
pytestmark = pytest.mark.skipif(
    LIB is None or not LIB.plait_amx(-1), reason="no AMX on this CPU (or not granted)"
)


def _product(w: torch.Tensor, x: torch.Tensor, threads: int, amx: bool) -> torch.Tensor:
    y = torch.empty(x.shape[0], w.shape[0])
    LIB.plait_amx(int(amx))
    try:
        assert cpu_decode.gemv(LIB, cpu_decode.DT_BF16, w, x, y, threads=threads) == 0
    finally:
        LIB.plait_amx(1)
    return y


@pytest.mark.parametrize("m", [1, 5, 16, 17, 33, 64])
def test_amx_products_are_within_float32_summation_error(m):
    """Each output within the worst-case error of summing its k products in float32 (the
    products of bfloat16 values are exact there): k u sum |w x|, as the vector kernels are."""
    gen = torch.Generator().manual_seed(m)
    n, k = 1040, 576
    w = torch.randn(n, k, generator=gen).bfloat16()
    x = torch.randn(m, k, generator=gen)
    xb = x.bfloat16().double()
    ref = xb @ w.double().T
    bound = k * 2.0**-24 * (xb.abs() @ w.double().abs().T)
    for amx in (True, False):
        err = (_product(w, x, 2, amx).double() - ref).abs()
        assert bool((err <= bound).all()), (amx, float((err - bound).max()))


def test_a_row_has_the_same_bits_alone_and_in_any_batch_on_any_thread_count():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4112, 576, generator=gen).bfloat16()
    x = torch.randn(40, 576, generator=gen)
    alone = torch.cat([_product(w, x[i : i + 1], 1, True) for i in range(40)])
    for m in (2, 16, 17, 32, 33, 40):
        for threads in (1, 2, 3):
            assert torch.equal(_product(w, x[:m], threads, True), alone[:m]), (m, threads)


def test_rows_past_the_last_whole_block_are_the_vector_kernels():
    """4,117 rows: 257 blocks by AMX, the last 5 rows by vectors whatever the batch."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(4117, 576, generator=gen).bfloat16()
    x = torch.randn(9, 576, generator=gen)
    amx, vectors = _product(w, x, 2, True), _product(w, x, 2, False)
    assert torch.equal(amx[:, 4112:], vectors[:, 4112:])
    assert not torch.equal(amx[:, :4112], vectors[:, :4112])  # AMX ran the blocks


def test_inputs_not_whole_32_chunks_run_by_vectors():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(64, 100, generator=gen).bfloat16()
    x = torch.randn(3, 100, generator=gen)
    assert torch.equal(_product(w, x, 2, True), _product(w, x, 2, False))


def _tiled(w: torch.Tensor, x: torch.Tensor, threads: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], w.shape[0])
    tiles = cpu_decode.tile_bf16_amx(w)
    assert cpu_decode.gemv(LIB, cpu_decode.DT_BF16T, tiles, x, y, threads=threads) == 0
    return y


def test_the_tiled_layout_is_each_whole_block_s_tiles_then_the_tail_rows():
    """``DT_BF16T``: block b's tile c (1 KiB) holds rows 16b .. 16b + 15, inputs 32c .. 32c + 31,
    row after row; the 5 rows past the last whole block follow as they are."""
    w = torch.arange(37 * 64, dtype=torch.float32).view(37, 64).bfloat16()
    flat = cpu_decode.tile_bf16_amx(w).reshape(-1)
    assert flat.shape == w.reshape(-1).shape
    for b in range(2):
        for c in range(2):
            at = (b * 2 + c) * 512
            assert torch.equal(
                flat[at : at + 512].view(16, 32), w[16 * b : 16 * b + 16, 32 * c : 32 * c + 32]
            )
    assert torch.equal(flat[32 * 64 :].view(5, 64), w[32:])
    with pytest.raises(ValueError, match="32"):
        cpu_decode.tile_bf16_amx(torch.zeros(16, 48, dtype=torch.bfloat16))


@pytest.mark.parametrize("rows", [16, 48, 4117])
def test_tiled_weights_give_the_plain_layout_s_amx_bits_alone_and_in_batches(rows):
    """The same tiles from another layout: every output, the tail rows' (by vectors) too, has
    the bits of ``DT_BF16`` by AMX, for any batch and thread count."""
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(rows, 576, generator=gen).bfloat16()
    x = torch.randn(40, 576, generator=gen)
    for m in (1, 2, 17, 40):
        for threads in (1, 2, 3):
            assert torch.equal(_tiled(w, x[:m], threads), _product(w, x[:m], threads, True)), (
                m,
                threads,
            )


def test_tiled_weights_run_by_amx_even_where_it_is_turned_off():
    """``plait_amx(0)`` turns the plain layout's products to the vector kernels; tiles only AMX
    can read, so they keep it."""
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(64, 576, generator=gen).bfloat16()
    x = torch.randn(3, 576, generator=gen)
    LIB.plait_amx(0)
    try:
        off = _tiled(w, x, 2)
    finally:
        LIB.plait_amx(1)
    assert torch.equal(off, _product(w, x, 2, True))
