"""Builds and loads ``cpu_decode.c``, the fused CPU decode step, with the machine's C compiler.

The library is compiled once per source, compiler and CPU (``-march=native``: the host's vector
instructions) into ``$PLAIT_CACHE_DIR/kernels`` (default ``~/.cache/plait/kernels``), about a
second with gcc; later processes load the cached file. ``library()`` returns None, with the
reason in ``build_error()``, where no compiler is found or the build fails: callers then keep
torch's decode path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from plait.runtime.model.model_source import default_cache_dir

if TYPE_CHECKING:
    from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_decode.c")
# files SOURCE includes: a build's cache key covers them too
INCLUDED = (Path(__file__).with_name("extend_attention.c"),)

_vp = ctypes.c_void_p
_i64, _int, _double = ctypes.c_int64, ctypes.c_int, ctypes.c_double

_error: str | None = None

# DT_* in cpu_decode.c: a product's weight format
DT_F32, DT_BF16, DT_I8, DT_I4, DT_I8P, DT_I4P, DT_I4PH, DT_I8PH, DT_BF16T = range(9)

# PH_* in cpu_decode.c: the parts of a decode step, in the order ``plait_phase_times`` writes them
STEP_PARTS = ("norm", "qkv", "rope+kv", "attention", "o", "gate_up", "silu", "down", "head")
# ``plait_claim_trace``'s slots (the parts, a step's first claimed phase, claims outside a
# step: TRACE_FIRST, TRACE_OTHER) and each slot's sums, in order
CLAIM_TRACE_SLOTS = (*STEP_PARTS, "first", "other")
CLAIM_TRACE_FIELDS = ("phases", "total", "own", "wait", "start", "busy", "joined")


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


@functools.cache
def cpuinfo_field(*names: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line that starts with one of ``names`` (the
    first CPU's), or None where the system lists none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(names):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def intel_cpu() -> bool:
    """Whether this CPU is Intel's (``/proc/cpuinfo``'s vendor_id); False where unknown."""
    return cpuinfo_field("vendor_id") == "GenuineIntel"


# -march=native: the host's vector instructions. On Intel CPUs float32's and the AVX512_BF16
# kernel's one-row products read ahead (``F32_ROW_AHEAD``, ``DOT_ROW_AHEAD`` in cpu_decode.c:
# faster on a Xeon; float32's slower on a Zen 3).
FLAGS = [
    "-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-pthread",
    *(["-DF32_ROW_AHEAD=4096", "-DDOT_ROW_AHEAD=4096"] if intel_cpu() else []),
]  # fmt: skip


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as the kernel lists them (``/proc/cpuinfo``'s ``flags`` line,
    ``Features`` on Arm), e.g. ``avx2``, ``avx512_vnni``; None where the system lists none."""
    flags = cpuinfo_field("flags", "Features")
    return None if flags is None else frozenset(flags.split())


def _library_path(cc: str, flags: list[str] = FLAGS) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        *(f.read_bytes() for f in INCLUDED),
        " ".join(flags).encode(),
        version.encode(),
        " ".join(sorted(cpu_flags() or [platform.processor()])).encode(),
    ):
        h.update(part + b"\0")
    return default_cache_dir() / "kernels" / f"cpu_decode-{h.hexdigest()[:16]}.so"


def _build(cc: str, out: Path, flags: list[str] = FLAGS) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)  # atomic: a concurrent build of the same file is equal
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library with its functions typed, or None (see ``build_error``)."""
    global _error
    cc = _compiler()
    if cc is None:
        _error = "no C compiler (gcc or cc, or $CC) was found"
        return None
    try:
        return _load(cc, FLAGS)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _error = f"building {SOURCE.name}: {e}"
        return None


def variant(defines: list[str]) -> ctypes.CDLL:
    """A separate build of ``SOURCE`` with ``-D`` ``defines`` (e.g. ``PLAIT_PHASE_TIMES``, for
    the benches), typed; its own thread pool and globals. Raises where it cannot be built."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc or cc, or $CC) was found")
    return _load(cc, FLAGS + [f"-D{d}" for d in defines])


def _load(cc: str, flags: list[str]) -> ctypes.CDLL:
    """The build of ``SOURCE`` with ``flags`` (made once, cached by source, flags, compiler and
    CPU), loaded and typed."""
    path = _library_path(cc, flags)
    if not path.is_file():
        _build(cc, path, flags)
    return typed(ctypes.CDLL(str(path)))


def typed(lib: ctypes.CDLL) -> ctypes.CDLL:
    """``lib`` (a build of ``SOURCE``) with its functions' argument and result types set."""
    lib.plait_decode_step.restype = _int
    lib.plait_decode_step.argtypes = [
        *(_vp, _vp, _vp),  # cfg, globals, per-layer pointers (int64 arrays)
        *(_double, _double, _int),  # eps, scale, M
        *(_vp, _vp, _vp, _vp, _vp, _vp, _i64),  # ids .. req_to_token (int64), its row stride
        *(_vp, _int, _vp, _int),  # logit rows (int64) and their count, logits (float32), threads
        _int,  # argmax_only: the head through its screen (``head_screen``) where there is one
        _vp,  # the screen's counts (int64 [2], added to: rows screened, rows given the full
        # head), or NULL
        _vp,  # next ids (int64 [R]): each logit row's argmax, as numpy's, written, or NULL
    ]
    lib.plait_extend_attention.restype = _int
    lib.plait_extend_attention.argtypes = [
        *(_vp, _vp, _vp, _int),  # q, the layer's K and V pool, bfloat16 (1) or float32 (0)
        *(_vp, _i64, _vp),  # req_to_token, its row stride, each request's row
        *(_vp, _vp, _int),  # prefix lengths, extend lengths (int64), requests
        *(_int, _int, _int),  # Hq, Hkv, D
        *(ctypes.c_float, _vp, _int),  # scale, out, threads
    ]
    lib.plait_extend_attention_built.restype = _int
    lib.plait_extend_attention_built.argtypes = [_int]  # bfloat16 (1) or float32 (0)
    lib.plait_argmax_rows.restype = None
    lib.plait_argmax_rows.argtypes = [_vp, _int, _i64, _vp]  # logits, rows, vocab, out (int64)
    lib.plait_bf16_dot.restype = _int
    lib.plait_bf16_dot.argtypes = []
    lib.plait_amx.restype = _int
    lib.plait_amx.argtypes = [_int]  # 1 on, 0 off, -1 as it is
    lib.plait_amx_head_rows.restype = _int
    lib.plait_amx_head_rows.argtypes = []
    lib.plait_amx_granted.restype = _int
    lib.plait_amx_granted.argtypes = []
    lib.plait_i8_vnni.restype = _int
    lib.plait_i8_vnni.argtypes = []
    lib.plait_packed_dot.restype = _int
    lib.plait_packed_dot.argtypes = []
    lib.plait_gemv.restype = _int
    lib.plait_gemv.argtypes = [_vp, _int, _vp, _vp, _i64, _i64, _vp, _vp, _vp, _int, _int, _int]
    for name in ("plait_phase_times", "plait_claim_trace"):  # the benches' builds only
        if hasattr(lib, name):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [_vp]  # double [...], read and cleared
    return lib


def claim_trace(lib: ctypes.CDLL) -> dict[str, dict[str, float]]:
    """A ``-DPLAIT_CLAIM_TRACE`` build's sums since the last call (``plait_claim_trace``,
    which clears them): by slot (``CLAIM_TRACE_SLOTS``), each field (``CLAIM_TRACE_FIELDS``;
    the times in seconds)."""
    width = len(CLAIM_TRACE_FIELDS)
    sums = (ctypes.c_double * (width * len(CLAIM_TRACE_SLOTS)))()
    lib.plait_claim_trace(sums)
    return {
        slot: dict(zip(CLAIM_TRACE_FIELDS, sums[i * width : (i + 1) * width], strict=True))
        for i, slot in enumerate(CLAIM_TRACE_SLOTS)
    }


def build_error() -> str | None:
    """Why ``library()`` returned None (None if it has not failed)."""
    return _error


def gemv(
    lib: ctypes.CDLL,
    dtype: int,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    *,
    scale: Tensor | None = None,
    low: Tensor | None = None,
    bias: Tensor | None = None,
    accumulate: bool = False,
    threads: int = 1,
) -> int:
    """One product for tests and benches, ``plait_gemv``: ``y = x Wᵀ (+ bias)``, or ``y +=``
    that when ``accumulate``; ``W`` [out, in] in the format ``dtype`` (``DT_*``; int8 / int4
    with their block ``scale`` and int4's ``low``). ``x`` [M, in] and ``y`` [M, out] float32,
    contiguous. Returns 0, -1 (out of memory) or -2 (int8 / int4 rows not whole blocks)."""
    (m, k), n = x.shape, y.shape[1]

    def ptr(t: Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    return lib.plait_gemv(
        w.data_ptr(), dtype, ptr(scale), ptr(low), k, n, x.data_ptr(), ptr(bias),
        y.data_ptr(), int(accumulate), m, threads,
    )  # fmt: skip


@functools.cache
def extend_attention_built(bf16: bool) -> bool:
    """Whether this process's library has ``plait_extend_attention`` for bfloat16 (else
    float32): asked once, not at every layer of every extend forward."""
    lib = library()
    return lib is not None and bool(lib.plait_extend_attention_built(int(bf16)))


def extend_attention(
    lib: ctypes.CDLL,
    q: Tensor,
    k_buf: Tensor,
    v_buf: Tensor,
    req_to_token: Tensor,
    rows: Tensor,
    prefix: Tensor,
    ext: Tensor,
    scale: float,
    out: Tensor,
    threads: int,
) -> int:
    """``plait_extend_attention``: causal attention of an extend forward's new tokens over the
    pool. ``q`` and ``out`` [N, Hq, D] and the layer's ``k_buf`` / ``v_buf`` [slots, Hkv, D]
    contiguous, all bfloat16 or all float32; ``req_to_token`` int64 [*, max_context]; per request ``rows`` (its
    table row), ``prefix`` and ``ext`` (new tokens, each > 0) int64. Returns 0, or -2 where the
    build or the shape is not supported (nothing written then)."""
    import torch

    n, hq, d = q.shape
    hkv = k_buf.shape[1]
    assert q.is_contiguous() and out.is_contiguous() and out.shape == q.shape
    assert k_buf.is_contiguous() and v_buf.is_contiguous() and req_to_token.is_contiguous()
    assert int(ext.sum()) == n, "the requests' new tokens are q's rows"
    assert q.dtype == k_buf.dtype == v_buf.dtype == out.dtype
    assert q.dtype in (torch.bfloat16, torch.float32)
    rows, prefix, ext = (t.to(torch.int64).contiguous() for t in (rows, prefix, ext))
    return lib.plait_extend_attention(
        q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), int(q.dtype == torch.bfloat16),
        req_to_token.data_ptr(), req_to_token.stride(0), rows.data_ptr(), prefix.data_ptr(),
        ext.data_ptr(), len(ext), hq, hkv, d, scale, out.data_ptr(), threads,
    )  # fmt: skip


def pack_i8_vnni(codes: Tensor, scale: Tensor, half: bool = False) -> tuple[Tensor, Tensor]:
    """``DT_I8P``'s layout of int8 codes [out, in] and their block scales [out, in / 32]
    (``out`` a multiple of 16, ``in`` of 32): per group of 16 rows, the codes as [in / 2][16][2]
    and the scales as [in / 32][16], in float32, or with ``half`` in float16 (``DT_I8PH``; the
    caller checks they are exact)."""
    import torch

    n, k = codes.shape
    if n % 16 or k % 32 or scale.shape != (n, k // 32):
        raise ValueError(f"DT_I8P packs [16 x i, 32 x j] codes with [out, in / 32] scales, got "
                         f"{tuple(codes.shape)} and {tuple(scale.shape)}")  # fmt: skip
    packed = codes.view(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()
    return packed, _by_group(scale.to(torch.float16 if half else torch.float32))


def tile_bf16_amx(w: Tensor) -> Tensor:
    """``DT_BF16T``'s layout of bfloat16 weights [out, in] (``in`` a multiple of 32): each
    whole 16-row block as AMX's A tiles, [in / 32][16][32] (a tile's 1 KiB contiguous), the rows
    past the last whole block after them as they are. The same shape and size: every block, and
    the tail, starts where it did."""
    import torch

    n, k = w.shape
    if k % 32 or w.dtype != torch.bfloat16:
        raise ValueError(f"DT_BF16T tiles bfloat16 [out, 32 x j], got {w.dtype} {tuple(w.shape)}")
    whole = n // 16 * 16
    tiles = w[:whole].reshape(n // 16, 16, k // 32, 32).transpose(1, 2).reshape(-1)
    return torch.cat((tiles, w[whole:].reshape(-1))).view(n, k)


def pack_i4_vnni(
    codes: Tensor, scale: Tensor, low: Tensor, half: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``DT_I4P``'s layout of int4 codes [out, in] (0..15, one per byte) with their block scales
    and lows [out, in / 32]: per group of 16 rows, 64 bytes per 8 consecutive codes (byte
    4r + i: code k0 + i of row r low, k0 + 4 + i high), then scales and lows as [in / 32][16],
    in float32, or with ``half`` in float16 (``DT_I4PH``; the caller checks they are exact)."""
    import torch

    n, k = codes.shape
    if n % 16 or k % 32 or scale.shape != (n, k // 32) or low.shape != scale.shape:
        raise ValueError(f"DT_I4P packs [16 x i, 32 x j] codes with [out, in / 32] scales and "
                         f"lows, got {tuple(codes.shape)}, {tuple(scale.shape)}")  # fmt: skip
    c = codes.to(torch.uint8).view(n // 16, 16, k // 8, 2, 4).permute(0, 2, 1, 3, 4)
    packed = (c[..., 0, :] | (c[..., 1, :] << 4)).contiguous()  # [n/16, k/8, 16, 4]
    dtype = torch.float16 if half else torch.float32
    return packed, _by_group(scale.to(dtype)), _by_group(low.to(dtype))


def _by_group(t: Tensor) -> Tensor:
    """[out, in / 32] -> [out / 16][in / 32][16]: a block's values for 16 rows, one vector."""
    n, blocks = t.shape
    return t.reshape(n // 16, 16, blocks).permute(0, 2, 1).contiguous()
