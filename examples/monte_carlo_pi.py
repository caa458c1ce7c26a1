"""Estimate pi on a local cluster: the README's first command runs this.

Starts a controller and 4 engines, throws 20 million darts across them,
prints the estimate and stops everything.
"""

import sys
import time

from cluster_launcher import Cluster


def throw_darts(n: int, seed: int) -> int:
    """How many of n random points in the unit square fall inside the quarter circle."""
    import random

    rng = random.Random(seed)
    hits = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        hits += x * x + y * y <= 1.0
    return hits


def main(engines: int = 4, darts: int = 20_000_000, chunks: int = 40) -> float:
    started = time.perf_counter()
    with Cluster(n=engines) as client:
        ready = time.perf_counter()
        view = client.load_balanced_view()
        per_chunk = darts // chunks
        hits = view.map(throw_darts, [per_chunk] * chunks, range(chunks), block=True)
        pi = 4.0 * sum(hits) / (per_chunk * chunks)
        used = len(client.ids)
    print(f"pi ~= {pi:.6f} from {per_chunk * chunks:,} darts on {used} engines "
          f"(cluster ready in {ready - started:.2f}s, total {time.perf_counter() - started:.2f}s)")
    return pi


if __name__ == "__main__":
    sys.exit(0 if abs(main() - 3.14159) < 0.01 else 1)
