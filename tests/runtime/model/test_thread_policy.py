"""The CPU thread policy: runs the faster count per forward size and follows changes."""

from __future__ import annotations

from plait.runtime.model.thread_policy import ThreadPolicy


def _run(policy: ThreadPolicy, tokens: int, cost: dict[int, float], steps: int) -> list[int]:
    chosen = []
    for _ in range(steps):
        t = policy.choose(tokens)
        policy.record(tokens, t, cost[t])
        chosen.append(t)
    return chosen


def test_single_token_decode_steps_are_learned_too():
    quiet = ThreadPolicy(2, min_interval=4, trial_forwards=1)
    assert _run(quiet, 1, {1: 2.0, 2: 1.0}, 20)[2:].count(2) >= 14  # a quiet box: 2 threads
    busy = ThreadPolicy(2, min_interval=4, trial_forwards=1)
    assert _run(busy, 1, {1: 1.0, 2: 5.0}, 20)[2:].count(1) >= 14  # a busy one: 1 thread


def test_settles_on_the_faster_count_and_backs_off_retrying_the_other():
    policy = ThreadPolicy(2, min_interval=4, max_interval=64, trial_forwards=1)
    chosen = _run(policy, 32, {1: 1.0, 2: 5.0}, 200)  # 2 threads stall (a busy machine)
    assert chosen[:2] == [2, 1]  # each count measured once
    tries = [i for i, t in enumerate(chosen) if t == 2][1:]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps == sorted(gaps) and gaps[-1] == 64  # the loser is re-tried ever more rarely
    assert chosen.count(2) < 15


def test_follows_the_machine_when_the_other_count_becomes_faster():
    policy = ThreadPolicy(2, min_interval=4, max_interval=8, trial_forwards=1)
    _run(policy, 32, {1: 1.0, 2: 5.0}, 50)
    chosen = _run(policy, 32, {1: 1.0, 2: 0.5}, 50)  # the machine went quiet
    assert chosen[:9].count(2) >= 2  # switched at the loser's next try (within max_interval)
    assert chosen[9:].count(2) >= 32  # one thread is now the one re-tried now and then


def test_sizes_are_learned_separately():
    policy = ThreadPolicy(
        2, min_interval=4, warm_tokens=1024, all_threads_above=1024, trial_forwards=1
    )
    _run(policy, 8, {1: 1.0, 2: 5.0}, 30)
    _run(policy, 512, {1: 5.0, 2: 1.0}, 30)
    assert _run(policy, 8, {1: 1.0, 2: 5.0}, 3) == [1, 1, 1]
    assert _run(policy, 512, {1: 5.0, 2: 1.0}, 3) == [2, 2, 2]


def test_one_thread_ceiling_never_asks_for_more():
    policy = ThreadPolicy(1)
    assert _run(policy, 64, {1: 1.0}, 5) == [1] * 5


def test_a_counts_first_large_forward_is_not_its_measure():
    """A prefill's first forward at a count carries one-time costs (kernel compiles, page
    faults): it is run again before the count is judged."""
    policy = ThreadPolicy(2, min_interval=4, trial_forwards=1)
    first = {1: 1.0, 2: 9.0}  # two threads' first forward paid for the warm-up
    chosen = []
    for i in range(6):
        t = policy.choose(200)
        policy.record(200, t, first[t] if i == 0 else {1: 2.0, 2: 1.0}[t])
        chosen.append(t)
    assert chosen[:4] == [2, 2, 1, 1]  # each count's first forward is tried again
    assert chosen[4:] == [2, 2]
    decode = ThreadPolicy(2, trial_forwards=1)
    assert _run(decode, 1, {1: 1.0, 2: 2.0}, 2) == [2, 1]  # decode steps: as before


def test_counts_are_compared_per_token_within_a_bucket():
    """Forwards of one bucket differ in size: a count is not judged by a smaller forward."""
    policy = ThreadPolicy(
        2, min_interval=4, warm_tokens=4096, all_threads_above=4096, trial_forwards=1
    )
    assert policy.choose(2048) == 2
    policy.record(2048, 2, 1.0)  # 2 threads: 2,048 tokens in 1 s
    assert policy.choose(1100) == 1
    policy.record(1100, 1, 0.9)  # 1 thread: 1,100 tokens in 0.9 s, slower per token
    assert [policy.choose(1500) for _ in range(3)] == [2, 2, 2]


def test_large_forwards_get_every_thread_unlearned():
    """Trying one thread on a large prefill costs seconds: such forwards are not explored."""
    policy = ThreadPolicy(2, min_interval=4)
    assert _run(policy, 2048, {1: 1.0, 2: 5.0}, 20) == [2] * 20
    assert ThreadPolicy(1).choose(2048) == 1


def test_a_count_is_judged_by_the_fastest_forward_of_a_trial():
    """Two threads are faster, but one forward in three is slowed by something else on the
    machine (a lost time slice): judged one forward at a time, one thread won now and then and
    kept the steps until its next try; judged by trials of three, two threads run throughout."""
    spikes = iter([1.0, 1.0, 9.0] * 200)

    def run(policy: ThreadPolicy) -> list[int]:
        chosen = []
        for _ in range(300):
            t = policy.choose(1)
            policy.record(1, t, next(spikes) if t == 2 else 1.8)
            chosen.append(t)
        return chosen

    by_trials = run(ThreadPolicy(2, min_interval=8))
    assert by_trials[:6] == [2, 2, 2, 1, 1, 1]  # each count's first trial: three forwards
    ones = "".join(map(str, by_trials[6:])).split("2")
    assert {r for r in ones if r} == {"111"}  # one thread only in its trials, three in a row
    assert by_trials.count(1) <= 18  # 6 tries in 300 forwards, ever more rarely
    one_at_a_time = run(ThreadPolicy(2, min_interval=8, trial_forwards=1))
    assert one_at_a_time.count(1) > 150  # the mechanism the trials replace, for contrast


def test_a_trial_of_the_loser_runs_its_forwards_back_to_back():
    policy = ThreadPolicy(2, min_interval=4, max_interval=4)
    chosen = _run(policy, 1, {1: 1.0, 2: 3.0}, 30)  # a busy box: one thread
    assert chosen[:6] == [2, 2, 2, 1, 1, 1]
    runs = "".join(map(str, chosen[6:])).split("1")
    assert {r for r in runs if r} == {"222"}  # every try of two threads: three in a row


def test_a_much_slower_count_is_re_tried_only_as_often_as_affordable():
    """A count 2x slower costs a trial's forwards again each try: with re-tries held to 3% of
    the time, the next try waits ~100 forwards (doubling from 8 alone tried it 3 times in the
    first 64)."""
    policy = ThreadPolicy(2, trial_forwards=3, explore_cost=0.03)
    chosen = _run(policy, 1, {1: 2.0, 2: 1.0}, 120)
    assert chosen[:6] == [2, 2, 2, 1, 1, 1]  # each count's first trial
    assert chosen[6:105] == [2] * 99  # ceil(3 * (2 - 1) / 0.03) = 100 forwards on
    assert 1 in chosen[105:]


def test_a_count_nearly_as_fast_is_re_tried_often():
    """Close counts cost little to re-try, so the policy keeps checking which is faster."""
    policy = ThreadPolicy(2, min_interval=8, max_interval=16, trial_forwards=3)
    chosen = _run(policy, 1, {1: 1.05, 2: 1.0}, 200)
    tries = sum(1 for a, b in zip(chosen, chosen[1:]) if a == 2 and b == 1)
    assert tries >= 8
