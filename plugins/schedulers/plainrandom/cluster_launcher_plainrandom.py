"""The plainrandom scheduler: any engine, uniformly at random."""

from collections.abc import Sequence

from cluster_launcher import hookimpl
from cluster_launcher.scheduler import Scheduler


class PlainRandom(Scheduler):
    name = "plainrandom"

    def choose(self, loads: Sequence[int]) -> int:
        return self.rng.randrange(len(loads))


@hookimpl
def cluster_launcher_register_schedulers():
    return [PlainRandom]
