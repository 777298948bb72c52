"""bench/contender.py: the CPU-taking process the decode benchmarks run beside."""

from __future__ import annotations

import pytest

from plait.bench.contender import Contender


def test_parse_reads_period_and_burst():
    c = Contender.parse("7:1")
    assert (c.period_ms, c.burst_ms) == (7, 1)
    assert str(c) == "1 ms of CPU every 7 ms"
    assert str(Contender.parse("busy")) == "a busy process"


@pytest.mark.parametrize("spec", ["1:7", "5:0", "3:-1"])
def test_a_burst_outside_its_period_is_refused(spec):
    with pytest.raises(ValueError, match="burst_ms"):
        Contender.parse(spec)


def test_the_process_lives_for_the_block():
    with Contender.parse("4:1") as c:
        assert c._proc.is_alive()
    assert not c._proc.is_alive()
