"""The weighted scheduler: two draws weighted 1/(1+load), the less loaded of
the two wins.  Seeded, so the counts below are the same on every run."""

import itertools
import random
from collections import Counter

import pytest
from cluster_launcher_weighted import Weighted

from cluster_launcher import plugins

DRAWS = 20_000


def expected_shares(loads):
    """What the documented rule gives, by enumerating every pair of draws
    (loads distinct, so 'the less loaded' is never a tie between two engines)."""
    weights = [1 / (1 + load) for load in loads]
    total = sum(weights)
    shares = [0.0] * len(loads)
    for a, b in itertools.product(range(len(loads)), repeat=2):
        winner = a if loads[a] <= loads[b] else b
        shares[winner] += weights[a] / total * weights[b] / total
    return shares


@pytest.mark.parametrize("loads", [[0, 1, 3, 9], [9, 3, 1, 0], [2, 0]])
def test_favours_low_loads_as_documented(loads):
    scheduler = Weighted(rng=random.Random(42))
    counts = Counter(scheduler.choose(loads) for _ in range(DRAWS))
    assert set(counts) <= set(range(len(loads)))
    by_load = sorted(range(len(loads)), key=loads.__getitem__)
    assert [counts[i] for i in by_load] == sorted((counts[i] for i in by_load), reverse=True), counts
    for index, share in enumerate(expected_shares(loads)):
        assert abs(counts[index] - share * DRAWS) < 0.1 * share * DRAWS + 30, (index, counts, share)


def test_an_idle_engine_beats_a_busy_one_most_of_the_time():
    scheduler = Weighted(rng=random.Random(3))
    picks = Counter(scheduler.choose([10, 0]) for _ in range(2000))
    assert picks[1] > 0.95 * 2000 and picks[0] > 0  # busy is rare but not impossible


@pytest.mark.parametrize("n", [1, 2, 5])
def test_never_out_of_range(n):
    scheduler = Weighted(rng=random.Random(n))
    rng = random.Random(100 + n)
    for _ in range(2000):
        assert 0 <= scheduler.choose([rng.randrange(5) for _ in range(n)]) < n


@pytest.mark.parametrize("name", ["weighted", "Weighted"])
def test_resolves_by_name(name):
    assert plugins.resolve("scheduler", name) is Weighted
