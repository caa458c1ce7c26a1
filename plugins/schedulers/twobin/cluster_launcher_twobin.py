"""The twobin scheduler: draw two engines at random, take the one used less
recently (the power of two choices: near-leastload balance at random cost)."""

from collections.abc import Sequence

from cluster_launcher import hookimpl
from cluster_launcher.scheduler import Scheduler


class TwoBin(Scheduler):
    name = "twobin"

    def choose(self, loads: Sequence[int]) -> int:
        n = len(loads)
        return min(self.rng.randrange(n), self.rng.randrange(n))  # lower index = less recently used


@hookimpl
def cluster_launcher_register_schedulers():
    return [TwoBin]
