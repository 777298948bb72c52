"""The fused CPU step's C source compiles wherever a C compiler is found.

Every other test of the step is skipped when the library cannot be built (a machine without a
compiler runs torch's ops instead), so a source that no longer compiled would otherwise pass
the suite unnoticed."""

from __future__ import annotations

import ctypes

import pytest
import torch

from plait.kernels import cpu_decode
from plait.runtime.model.models.quant_linear import Int4Linear, Int8Linear


@pytest.mark.skipif(cpu_decode._compiler() is None, reason="no C compiler on this machine")
def test_the_c_step_builds_where_a_compiler_is_found():
    assert cpu_decode.library() is not None, cpu_decode.build_error()


def _host_has(flag: str) -> bool:
    return flag in (cpu_decode.cpu_flags() or ())


# builds for CPUs with fewer vector instructions than this one: without AVX512_BF16 (float32
# FMAs on widened weights), and AVX2 alone (no AVX-512: int4's widening kernel, and the packed
# int8 / int4 formats by vpmaddwd / vpmaddubsw instead of VNNI)
NARROWER = {
    "avx512-no-bf16": (["-march=native", "-mno-avx512bf16"], "avx512f"),
    "avx2": (["-march=x86-64-v3"], "avx2"),
}


@pytest.mark.skipif(cpu_decode._compiler() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("target", NARROWER)
def test_narrower_builds_compute_the_same_products(target, tmp_path):
    """The kernels a CPU without AVX512_BF16 (or without AVX-512) runs, built here with those
    instructions turned off: every weight format against float64 (activations stay float32;
    int8's weights are bf16(q * scale) in every build)."""
    flags, needs = NARROWER[target]
    if not _host_has(needs):
        pytest.skip(f"this CPU cannot run a {target} build")
    out = tmp_path / "narrow.so"
    base = [f for f in cpu_decode.FLAGS if not f.startswith("-march")]
    cpu_decode._build(cpu_decode._compiler(), out, [*base, *flags])
    lib = cpu_decode.typed(ctypes.CDLL(str(out)))
    assert lib.plait_bf16_dot() == 0
    if target == "avx2":
        assert lib.plait_packed_dot() == 1  # the AVX2 kernels of the packed formats
    gen = torch.Generator().manual_seed(7)
    n, k = 48, 96  # torch's int4 packing needs rows in sixteens
    dense = torch.randn(n, k, generator=gen)
    i8, i4 = Int8Linear.from_float(dense), Int4Linear.from_float(dense)
    q = i4.nibbles.view(n, k // 32, 16)
    codes = torch.stack([q & 15, q >> 4], dim=2).view(n, k // 32, 32).float()
    i4_dense = codes * i4.group_scale[..., None] + i4.group_low[..., None]
    bf = dense.bfloat16()
    formats = {  # code, weight, scale, low, the weight it multiplies by
        "float32": (cpu_decode.DT_F32, dense, None, None, dense),
        "bfloat16": (cpu_decode.DT_BF16, bf, None, None, bf.float()),
        "int8": (cpu_decode.DT_I8, i8.qweight, i8.scale, None, i8.dense.float()),
        "int4": (cpu_decode.DT_I4, i4.nibbles, i4.group_scale, i4.group_low, i4_dense.view(n, k)),
    }
    for m in (1, 3, 6):
        x = torch.randn(m, k, generator=gen)
        for name, (code, w, scale, low, weight) in formats.items():
            y = torch.empty(m, n)
            rc = cpu_decode.gemv(lib, code, w, x, y, scale=scale, low=low, threads=2)
            assert rc == 0
            expected = x.double() @ weight.double().t()
            torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4, msg=name)
        # the packed int8 / int4 formats where the build has them (AVX512_VNNI or AVX2; int16
        # activations: their own reference in test_fused_decode.py); the same bits as this
        # CPU's own build, whichever instructions each runs them by
        packs = {
            cpu_decode.DT_I8P: (*cpu_decode.pack_i8_vnni(i8.qweight, i8.scale), None),
            cpu_decode.DT_I8PH: (*cpu_decode.pack_i8_vnni(i8.qweight, i8.scale, half=True), None),
            cpu_decode.DT_I4P: cpu_decode.pack_i4_vnni(i4.codes(), i4.group_scale, i4.group_low),
            cpu_decode.DT_I4PH: cpu_decode.pack_i4_vnni(
                i4.codes(), i4.group_scale, i4.group_low, half=True
            ),
        }
        for code, (codes, scales, lows) in packs.items():
            y, native = torch.empty(m, n), torch.empty(m, n)
            rc = cpu_decode.gemv(lib, code, codes, x, y, scale=scales, low=lows)
            if not lib.plait_packed_dot():
                assert rc == -2
                continue
            cpu_decode.gemv(cpu_decode.library(), code, codes, x, native, scale=scales, low=lows)
            assert rc == 0 and torch.equal(y, native)
        # AMX's tiles (no AMX without AVX512_BF16): refused, never read as rows
        assert not lib.plait_amx_granted()
        tiles = cpu_decode.tile_bf16_amx(bf)
        assert cpu_decode.gemv(lib, cpu_decode.DT_BF16T, tiles, x, torch.empty(m, n)) == -2


def test_the_step_cfg_names_follow_the_c_enum():
    """``FusedDecode``'s cfg[] is filled by name in ``fused_decode.CFG``'s order; the C step
    reads it by its ``CFG_*`` enum: the two lists must be the same, in the same order."""
    import re

    from plait.runtime.model.fused_decode import CFG

    source = cpu_decode.SOURCE.read_text()
    enum = re.search(r"enum\s*\{([^}]*CFG_COUNT[^}]*)\}", source)
    assert enum is not None, "cpu_decode.c has no CFG_* enum ending in CFG_COUNT"
    names = [n.strip().removeprefix("CFG_") for n in enum.group(1).split(",") if n.strip()]
    assert names[-1] == "COUNT"
    assert tuple(names[:-1]) == CFG
