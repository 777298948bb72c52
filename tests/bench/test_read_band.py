"""``bench_vs_llamacpp --read-band``: a run is kept only where the read bound, read just before
and just after it, stayed inside the band; the bench waits for the band before a run and redoes
a run whose bound left it."""

from __future__ import annotations

import argparse

import pytest

from plait.bench import bench_vs_llamacpp as bench


class Bound:
    """Readings in GB/s, in order (``ReadBound.measure`` returns bytes per second)."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = list(readings)

    def measure(self) -> float:
        return self.readings.pop(0) * 1e9


@pytest.fixture
def runs(monkeypatch):
    done: list[int] = []

    async def run_workload(base, workload, rep, args):
        done.append(rep)
        return bench.Result(seconds=1.0, tokens=100 + len(done))

    monkeypatch.setattr(bench, "run_workload", run_workload)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    return done


def test_a_run_inside_the_band_is_kept_with_the_higher_reading(runs):
    r, gbps = bench._bounded_run("", "single", 0, argparse.Namespace(), Bound([60, 65]), (55, 90))
    assert (r.rate, gbps, len(runs)) == (101.0, 65.0, 1)


def test_the_bench_waits_for_the_band_and_redoes_a_run_that_left_it(runs):
    # 36 and 37: wait; 61: start; 38 after: redo; 62, 64: kept
    bound = Bound([36, 37, 61, 38, 62, 64])
    r, gbps = bench._bounded_run("", "single", 0, argparse.Namespace(), bound, (55, 90))
    assert (r.rate, gbps, len(runs)) == (102.0, 64.0, 2)
    assert bound.readings == []


def test_without_a_band_every_run_is_kept(runs):
    r, gbps = bench._bounded_run("", "shared", 0, argparse.Namespace(), Bound([36, 70]), None)
    assert (r.rate, gbps) == (101.0, 70.0)
    r, gbps = bench._bounded_run("", "shared", 1, argparse.Namespace(), None, None)
    assert gbps is None


def test_a_band_that_is_never_held_stops_the_bench(runs):
    with pytest.raises(SystemExit, match="in 2 tries"):
        bench._bounded_run("", "single", 0, argparse.Namespace(), Bound([60, 30, 60, 30]),
                           (55, 90), tries=2)  # fmt: skip


@pytest.mark.parametrize("text", ["55", "90:55", "a:b", "-1:5"])
def test_a_malformed_band_is_refused(text):
    with pytest.raises(SystemExit, match="--read-band"):
        bench._band(text)
