"""The fused CPU step's C source compiles wherever a C compiler is found.

Every other test of the step is skipped when the library cannot be built (a machine without a
compiler runs torch's ops instead), so a source that no longer compiled would otherwise pass
the suite unnoticed."""

from __future__ import annotations

import pytest

from plait.kernels import cpu_decode


@pytest.mark.skipif(cpu_decode._compiler() is None, reason="no C compiler on this machine")
def test_the_c_step_builds_where_a_compiler_is_found():
    assert cpu_decode.library() is not None, cpu_decode.build_error()
