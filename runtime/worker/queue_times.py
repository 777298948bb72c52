"""Queue time per request class: how long requests waited for their first admission, bucketed
per (priority, tenant), for ``/metrics``."""

from __future__ import annotations

import bisect
from typing import Any

# seconds; Prometheus-style upper bounds (the last bucket, +Inf, is implicit)
QUEUE_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class QueueTimes:
    """One histogram per (priority, tenant) label pair; ``None`` labels as ""."""

    def __init__(self) -> None:
        # label -> [count per bucket (not cumulative), +Inf last], then sum, count
        self.series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def observe(self, priority: int | None, tenant: str | None, seconds: float) -> None:
        key = ("" if priority is None else str(priority), tenant or "")
        if key not in self.series:
            self.series[key] = ([0] * (len(QUEUE_TIME_BUCKETS) + 1), [0.0, 0.0])
        counts, total = self.series[key]
        counts[bisect.bisect_left(QUEUE_TIME_BUCKETS, seconds)] += 1
        total[0] += seconds
        total[1] += 1

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and strings (it crosses the worker socket in the stats record)."""
        return {
            "buckets": list(QUEUE_TIME_BUCKETS),
            "series": [
                {"priority": p, "tenant": t, "counts": list(c), "sum": s[0], "count": int(s[1])}
                for (p, t), (c, s) in sorted(self.series.items())
            ],
        }
