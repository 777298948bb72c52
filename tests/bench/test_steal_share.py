"""``bench_machine.StealShare``: the host's steal as a share of the CPU time between ``start``
and ``share``, from /proc/stat's first line."""

from __future__ import annotations

from plait.bench.bench_machine import StealShare


def test_share_is_the_steal_ticks_over_all_ticks(monkeypatch):
    ticks = iter([(100, 1000), (130, 1300), (130, 1300), (130, 1300)])
    monkeypatch.setattr(StealShare, "_ticks", staticmethod(lambda: next(ticks)))
    s = StealShare()
    assert s.share() == 0.1  # 30 of 300 jiffies
    s.start()
    assert s.share() == 0.0  # no time passed: no division by zero


def test_reads_this_machine():
    steal, total = StealShare._ticks()
    assert 0 <= steal <= total and total > 0
    assert 0.0 <= StealShare().share() <= 1.0
