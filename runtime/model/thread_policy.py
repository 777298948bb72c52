"""How many CPU threads each forward runs on, learned from how fast each count actually runs.

On a small CPU box shared with the HTTP server, the client and other jobs, a 2-thread OpenMP
region stalls whenever one of its threads is descheduled: every op waits for the slower thread's
next time slice. Measured (bench/RESULTS.md, issue 15) under contention, 2 threads ran a decode
step 5-10x slower than 1 thread in bfloat16 / int4, and float32 GEMMs at M >= 8 likewise; on a
quiet box 2 threads are faster for large forwards. No fixed count is right for both, so the
policy keeps, per forward size (a power-of-two bucket of tokens), an exponential moving
average of seconds per token for each candidate count (each trial of a few forwards counted
by its fastest), runs the faster one, and re-tries the other now and then (see
``ThreadPolicy``) so it follows the machine's load.
Every size up to ``all_threads_above`` tokens is learned, single-token decode steps included: a
decode step streams its weights faster from two cores when both are free, and stalls on the
barrier of every op when not. Larger forwards (prefill chunks) always get every thread.
Thread counts change speed, and the float32 bits of attention: the matrix products give the
same bits at 1 and 2 threads, but SDPA's CPU kernel sums long key ranges in a different order
(differences of ~1e-7, measured; see bench/RESULTS.md, issue 15).
"""

from __future__ import annotations

import math


class ThreadPolicy:
    """``choose(num_tokens)`` before a forward, ``record(...)`` with its duration after.

    A count is judged by trials of ``trial_forwards`` consecutive forwards: a trial's measure
    is its fastest forward (seconds per token), so a single forward slowed by something else
    on the machine (a time slice lost to the HTTP server, a page fault) does not decide; a count
    slowed throughout (both cores busy) is slow in every forward of its trial. The running
    count's trials follow one another; the other count is tried now and then.

    Re-trying the losing count costs one slow trial, so a bucket's interval between tries
    doubles (``min_interval`` .. ``max_interval`` forwards) each time the loser loses again and
    falls back to ``min_interval`` when it wins. It is also never shorter than what keeps the
    re-tries' cost under ``explore_cost`` of the time: a trial of a count ``r`` times slower
    costs ``trial_forwards * (r - 1)`` forwards' time, so the next try waits at least that over
    ``explore_cost`` forwards (a float32 decode step at 1 thread ~2x slower: ~100 forwards
    between tries, where doubling from 8 tried it 3 times in a stream's first 64 tokens and
    made a first request ~10-20% slower than the next).

    Counts are compared by seconds per token: a bucket's forwards differ in size up to 2x (a
    prefill chunk of 2,048 tokens and one of 1,100 share a bucket), and per forward the smaller
    one's count won. Above ``warm_tokens`` a count's first forward in a bucket is not recorded
    (it is tried again): it carries one-time costs (oneDNN compiling kernels for new shapes,
    first-touch page faults) that made two threads lose prefills they ran twice as fast.
    Above ``all_threads_above`` tokens every forward gets every thread, unlearned: trying one
    thread on a prefill chunk of 2,048 tokens cost 3-4 s on this box, and such a forward's
    parallel regions are long, so a descheduled thread costs a time slice, not a barrier per op
    (perf: one core idle for 4-6 s of a 10 s batch of distinct prompts while it was tried).
    """

    def __init__(
        self,
        max_threads: int,
        *,
        min_interval: int = 8,
        max_interval: int = 512,
        smoothing: float = 0.3,
        warm_tokens: int = 64,
        all_threads_above: int = 256,
        trial_forwards: int = 3,
        explore_cost: float = 0.03,
    ) -> None:
        self.candidates = sorted({1, max(max_threads, 1)})
        self.min_interval, self.max_interval = min_interval, max_interval
        self.smoothing = smoothing
        self.trial_forwards = max(trial_forwards, 1)
        self.explore_cost = explore_cost
        self._avg: dict[tuple[int, int], float] = {}  # (bucket, threads) -> seconds per token
        self._trial: dict[tuple[int, int], list[float]] = {}  # the current trial's forwards
        self._trying: dict[int, int] = {}  # bucket -> the loser, while its trial runs
        self._until_try: dict[int, int] = {}  # bucket -> forwards until the loser's next try
        self._interval: dict[int, int] = {}
        self.warm_tokens, self.all_threads_above = warm_tokens, all_threads_above
        self._warmed: set[tuple[int, int]] = set()  # (bucket, threads) past their first forward

    @staticmethod
    def bucket(num_tokens: int) -> int:
        return max(num_tokens - 1, 0).bit_length()

    def choose(self, num_tokens: int) -> int:
        if len(self.candidates) == 1:
            return 1
        if num_tokens > self.all_threads_above:
            return self.candidates[-1]
        b = self.bucket(num_tokens)
        untried = [t for t in self.candidates if (b, t) not in self._avg]
        if untried:
            return untried[-1]
        if b in self._trying:
            return self._trying[b]
        best = self._best(b)
        left = self._until_try.get(b, self.min_interval) - 1
        self._until_try[b] = left
        if left <= 0:
            self._trying[b] = next(t for t in self.candidates if t != best)
            return self._trying[b]
        return best

    def record(self, num_tokens: int, threads: int, seconds: float) -> None:
        if len(self.candidates) == 1 or num_tokens > self.all_threads_above:
            return
        b = self.bucket(num_tokens)
        key = (b, threads)
        if num_tokens > self.warm_tokens and key not in self._warmed:
            self._warmed.add(key)  # a first forward: not a measure of the count
            return
        trial = self._trial.setdefault(key, [])
        trial.append(seconds / max(num_tokens, 1))
        if len(trial) < self.trial_forwards:
            return
        per_token = min(trial)
        trial.clear()
        tried_loser = self._trying.pop(b, None) == threads
        old = self._avg.get(key)
        # the loser's average is stale by design: a fresh try replaces it
        fresh = old is None or tried_loser
        self._avg[key] = per_token if fresh else old + self.smoothing * (per_token - old)
        measured = all((b, t) in self._avg for t in self.candidates)
        if tried_loser or (old is None and measured):  # a try, or the bucket's first measures
            if tried_loser and self._best(b) == threads:
                interval = self.min_interval  # the loser won: it runs now, the other is tried
            else:
                doubled = 2 * self._interval.get(b, self.min_interval) if tried_loser else 0
                interval = max(self.min_interval, doubled, self._affordable_interval(b))
            self._interval[b] = self._until_try[b] = min(interval, self.max_interval)

    def _affordable_interval(self, bucket: int) -> int:
        """Forwards between tries that keep their cost under ``explore_cost`` of the time."""
        per_token = [self._avg[(bucket, t)] for t in self.candidates]
        best, worst = min(per_token), max(per_token)
        ratio = worst / best if best > 0 else 1.0
        return math.ceil(self.trial_forwards * (ratio - 1) / self.explore_cost)

    def _best(self, bucket: int) -> int:
        return min(self.candidates, key=lambda t: self._avg[(bucket, t)])
