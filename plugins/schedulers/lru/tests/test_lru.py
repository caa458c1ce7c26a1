"""The lru scheduler: always the least recently used engine (index 0), whatever the loads."""

import pytest
from cluster_launcher_lru import LRU

from cluster_launcher import plugins


@pytest.mark.parametrize("loads", [[0], [9, 0, 0], [0, 0], [1, 2, 3], [100, 0]])
def test_always_the_least_recently_used(loads):
    assert LRU().choose(loads) == 0


@pytest.mark.parametrize("name", ["lru", "LRU"])
def test_resolves_by_name(name):
    assert plugins.resolve("scheduler", name) is LRU
