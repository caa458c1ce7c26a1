"""The lru scheduler: the least recently used engine, whatever its load."""

from collections.abc import Sequence

from cluster_launcher import hookimpl
from cluster_launcher.scheduler import Scheduler


class LRU(Scheduler):
    name = "lru"

    def choose(self, loads: Sequence[int]) -> int:
        return 0  # loads arrive least-recently-used first


@hookimpl
def cluster_launcher_register_schedulers():
    return [LRU]
