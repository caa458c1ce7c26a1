"""Fixtures for cross-package tests: real controller and engine processes
(:class:`cluster_launcher.testing.processes.LocalCluster`).

``local_cluster`` (one per test module) is a controller and two engines
started as ``python -m cluster_launcher controller|engine --profile-dir=...``
in a temp profile; ``make_cluster`` starts extra ones a test may break (shut
down, kill).  Every process is stopped by the PID it was started with, and
teardown fails the test if one is left running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_launcher.testing.processes import LocalCluster


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("profile"), n=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``make_cluster(n=2, controller_args=())`` -> a started LocalCluster of
    this test's own, stopped (and checked) at teardown."""
    made: list[LocalCluster] = []

    def make(n: int = 2, controller_args: tuple[str, ...] = ()) -> LocalCluster:
        cluster = LocalCluster(tmp_path_factory.mktemp("profile"), n=n, controller_args=controller_args)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
