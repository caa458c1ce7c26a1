"""The leastload scheduler: the engine with the fewest tasks in flight;
among equals, the least recently used (the order ``loads`` arrives in)."""

from collections.abc import Sequence

from cluster_launcher import hookimpl
from cluster_launcher.scheduler import Scheduler


class LeastLoad(Scheduler):
    name = "leastload"

    def choose(self, loads: Sequence[int]) -> int:
        return min(range(len(loads)), key=loads.__getitem__)


@hookimpl
def cluster_launcher_register_schedulers():
    return [LeastLoad]
