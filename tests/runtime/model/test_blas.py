"""Float32 products through OpenBLAS: what torch computes (to float32 rounding), the same bits
at any OpenBLAS thread count, and the runner's threads: torch's own ops on one thread, the
caller's count to OpenBLAS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plait.runtime.model.models import blas
from plait.runtime.model.models.linear import Linear

pytestmark = pytest.mark.skipif(blas.numpy_openblas() is None, reason="numpy without OpenBLAS")


def _within_rounding(y: torch.Tensor, x: torch.Tensor, layer: Linear) -> None:
    """``y`` is ``layer(x)`` to float32 rounding: within the worst-case bound of an n-term dot
    product, gamma_n = n u / (1 - n u) times sum |x_i w_i| + |b|, of the float64 value. Any
    order of the additions (MKL's, OpenBLAS's kernels, blocks) meets it; a wrong term does not."""
    w = (layer.weight.t() if layer.transposed else layer.weight).double()  # [out, in]
    b = layer.bias.double()
    exact = F.linear(x.double(), w, b)
    size = F.linear(x.double().abs(), w.abs(), b.abs())
    nu = (x.shape[-1] + 1) * 2.0**-24  # n products and the bias
    assert (y.double() - exact).abs().le(nu / (1 - nu) * size).all()


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])  # wide ([in, out]) and tall
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_openblas_linear_computes_what_torch_does(shape, rows):
    torch.manual_seed(rows)
    layer = Linear(*shape, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))
        layer.bias.copy_(torch.randn(shape[1]))
    x = torch.randn(2, rows, shape[0])  # leading dimensions kept
    with torch.inference_mode():
        expected = layer(x)
        layer.use_openblas(True)
        assert layer.openblas
        y = layer(x)
    assert y.shape == expected.shape and y.dtype == torch.float32
    _within_rounding(expected, x, layer)  # the bound holds for torch's own product
    _within_rounding(y, x, layer)


def test_openblas_is_for_float32_weights_only():
    layer = Linear(32, 64, dtype=torch.bfloat16).to(torch.bfloat16)
    layer.use_openblas(True)
    assert not layer.openblas


def test_a_new_weight_tensor_is_seen():
    layer = Linear(16, 32)
    layer.use_openblas(True)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        layer.weight.data = torch.zeros_like(layer.weight)
        assert torch.count_nonzero(layer(x)) == 0
        layer.weight.data = torch.ones_like(layer.weight)
        torch.testing.assert_close(layer(x), x @ torch.ones(16, 32))


@pytest.mark.parametrize("rows", [1, 2, 7, 300])
def test_same_bits_at_one_and_two_openblas_threads(rows):
    openblas = blas.numpy_openblas()
    w = np.random.default_rng(0).standard_normal((576, 3072), dtype=np.float32)
    x = torch.randn(rows, 576)
    out = []
    for n in (1, 2):
        openblas.set_threads(n)
        out.append((blas.matmul(x, w, True), blas.matmul(x, np.ascontiguousarray(w.T), False)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    torch.testing.assert_close(
        out[0][0], F.linear(x, torch.from_numpy(w).t()), rtol=1e-4, atol=1e-4
    )


def test_runner_keeps_torch_on_one_thread_and_gives_openblas_the_callers_count(tiny_lm_dir):
    from plait.runtime.engine import Engine

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        engine = Engine(tiny_lm_dir, max_total_tokens=512, float32_matmul="openblas")
        runner = engine.core.runner
        assert runner.openblas is not None
        runner.adaptive_threads = False
        engine.generate("Hi", {"max_new_tokens": 3, "temperature": 0})
        # an in-process engine leaves the caller's count as it found it
        assert torch.get_num_threads() == 2 and runner.openblas.threads == 2
        runner.pin_torch_threads = True  # what the worker process does
        engine.generate("Hi", {"max_new_tokens": 3, "temperature": 0})
        assert torch.get_num_threads() == 1 and runner.openblas.threads == 2
        torch.set_num_threads(1)  # the caller's own count is latched only when not one
        engine.generate("Hi", {"max_new_tokens": 2, "temperature": 0})
        assert runner.openblas.threads == 2
    finally:
        torch.set_num_threads(before)


def test_float32_matmul_torch_leaves_torch_products(tiny_lm_dir):
    from plait.runtime.engine import Engine

    engine = Engine(tiny_lm_dir, max_total_tokens=512, float32_matmul="torch")
    assert engine.core.runner.openblas is None


def test_auto_takes_openblas_only_for_weights_that_miss_the_caches(tiny_lm_dir, monkeypatch):
    from plait.runtime.engine import Engine

    small = Engine(tiny_lm_dir, max_total_tokens=512)  # auto: a tiny model stays on torch
    assert small.core.runner.openblas is None
    monkeypatch.setattr(blas, "intel_cpu", lambda: False)
    assert blas.resolve("auto", torch.device("cpu"), blas.AUTO_MIN_WEIGHT_BYTES) is not None
    assert blas.resolve("auto", torch.device("cpu"), blas.AUTO_MIN_WEIGHT_BYTES - 1) is None
    assert blas.resolve("openblas", torch.device("cpu"), 0) is not None


def test_auto_keeps_mkl_on_intel_cpus(monkeypatch):
    monkeypatch.setattr(blas, "intel_cpu", lambda: True)
    assert blas.resolve("auto", torch.device("cpu"), blas.AUTO_MIN_WEIGHT_BYTES) is None
    assert blas.resolve("openblas", torch.device("cpu"), 0) is not None  # asked for: taken
