"""The weighted scheduler: draw two engines with probability weighted towards
the idle ones (weight 1/(1+load)), take the less loaded of the two."""

from collections.abc import Sequence

from cluster_launcher import hookimpl
from cluster_launcher.scheduler import Scheduler


class Weighted(Scheduler):
    name = "weighted"

    def choose(self, loads: Sequence[int]) -> int:
        weights = [1.0 / (1 + load) for load in loads]
        a, b = self.rng.choices(range(len(loads)), weights=weights, k=2)
        return a if loads[a] <= loads[b] else b


@hookimpl
def cluster_launcher_register_schedulers():
    return [Weighted]
