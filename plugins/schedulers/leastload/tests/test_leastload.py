"""The leastload scheduler: the minimum load, ties to the least recently used
(the lowest index, since loads arrive least-recently-used first)."""

import pytest
from cluster_launcher_leastload import LeastLoad

from cluster_launcher import plugins


@pytest.mark.parametrize("loads, expected", [
    ([0], 0),
    ([3, 1, 2], 1),
    ([2, 2, 2], 0),          # all equal: the least recently used
    ([4, 1, 0, 0, 1], 2),    # first of the tied minima
    ([5, 5, 5, 4], 3),       # the minimum even when it is the most recently used
])
def test_picks_the_least_loaded_ties_to_the_lowest_index(loads, expected):
    assert LeastLoad().choose(loads) == expected


def test_is_deterministic_whatever_the_rng():
    loads = [3, 0, 7, 0, 2]
    assert {LeastLoad().choose(loads) for _ in range(50)} == {1}


def test_accepts_any_sequence():
    assert LeastLoad().choose((2, 1, 1)) == 1


@pytest.mark.parametrize("name", ["leastload", "LeastLoad", "LEASTLOAD"])
def test_resolves_by_name(name):
    assert plugins.resolve("scheduler", name) is LeastLoad
