"""The twobin scheduler: two random draws, the lower index (the less recently
used) wins.  Seeded, so the counts below are the same on every run."""

import random
from collections import Counter

import pytest
from cluster_launcher_twobin import TwoBin

from cluster_launcher import plugins

DRAWS = 20_000


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_never_out_of_range(n):
    scheduler = TwoBin(rng=random.Random(n))
    picks = {scheduler.choose([0] * n) for _ in range(2000)}
    assert picks <= set(range(n)) and picks == set(range(n))  # and every engine gets a turn


def test_distribution_favours_the_least_recently_used():
    n = 4
    scheduler = TwoBin(rng=random.Random(1234))
    counts = Counter(scheduler.choose([0] * n) for _ in range(DRAWS))
    # min of two uniform draws: P(i) = (2(n - i) - 1) / n^2  ->  7/16, 5/16, 3/16, 1/16
    for index in range(n):
        expected = DRAWS * (2 * (n - index) - 1) / n ** 2
        assert abs(counts[index] - expected) < 0.1 * expected, (index, counts)  # sd is 1-3%
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0


def test_ignores_loads():
    # Only recency matters: the same seed gives the same picks whatever the loads.
    plain = TwoBin(rng=random.Random(7))
    loaded = TwoBin(rng=random.Random(7))
    assert [plain.choose([0, 0, 0]) for _ in range(200)] == [loaded.choose([9, 0, 5]) for _ in range(200)]


@pytest.mark.parametrize("name", ["twobin", "TwoBin"])
def test_resolves_by_name(name):
    assert plugins.resolve("scheduler", name) is TwoBin
