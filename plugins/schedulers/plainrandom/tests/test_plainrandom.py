"""The plainrandom scheduler: every engine equally likely, loads ignored.
Seeded, so the counts below are the same on every run."""

import random
from collections import Counter

import pytest
from cluster_launcher_plainrandom import PlainRandom

from cluster_launcher import plugins

DRAWS = 20_000


@pytest.mark.parametrize("loads", [[0] * 5, [9, 0, 3, 0, 1]])
def test_covers_every_index_uniformly(loads):
    scheduler = PlainRandom(rng=random.Random(99))
    counts = Counter(scheduler.choose(loads) for _ in range(DRAWS))
    assert set(counts) == set(range(len(loads)))
    for index in range(len(loads)):
        assert abs(counts[index] - DRAWS / len(loads)) < 0.05 * DRAWS / len(loads), counts  # sd is 1.4%


def test_ignores_loads():
    plain = PlainRandom(rng=random.Random(5))
    loaded = PlainRandom(rng=random.Random(5))
    assert [plain.choose([0, 0, 0]) for _ in range(200)] == [loaded.choose([0, 9, 9]) for _ in range(200)]


def test_single_engine():
    assert PlainRandom(rng=random.Random(0)).choose([4]) == 0


@pytest.mark.parametrize("name", ["plainrandom", "PlainRandom"])
def test_resolves_by_name(name):
    assert plugins.resolve("scheduler", name) is PlainRandom
