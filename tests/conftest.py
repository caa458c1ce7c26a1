"""Fixtures for cross-package tests: real controller and engine processes
(:class:`cluster_launcher.testing.processes.LocalCluster`).

``local_cluster`` (one per test module) is a controller and two engines
started as ``python -m cluster_launcher controller|engine --profile-dir=...``
in a temp profile; ``make_cluster`` starts extra ones a test may break (shut
down, kill).  Every process is stopped by the PID it was started with, and
teardown fails the test if one is left running.

``make_gate`` makes gates: files a task running on an engine waits for (each
test module's ``_wait_for_gate``) and the test creates when it lets the task
finish.  A test that needs "still running" or "still queued" holds a task at a
gate instead of counting on a sleep being long enough.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_launcher.testing.batchbeds import CondorBed, GridEngineBed, SlurmBed, condor_directory, require
from cluster_launcher.testing.processes import LocalCluster, running_with


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for the ``cluster-launcher`` command line, its home in
    ``tmp_path/home``; on the way out every process still running with
    ``tmp_path`` on its command line is killed (by PID) and fails the test."""
    environ = {**os.environ, "CLUSTER_LAUNCHER_DIR": str(tmp_path / "home")}
    yield environ
    stray = running_with(str(tmp_path))
    for proc in stray:
        proc.kill()
    assert not stray, f"processes left running: {[p.info['cmdline'] for p in stray]}"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("profile"), n=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class Gate:
    """A file that does not exist yet: a task waits for it until the test calls ``open()``."""

    def __init__(self, path: str):
        self.path = path

    def open(self) -> None:
        with open(self.path, "a"):
            pass


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator:
    """``make_gate()`` -> a new closed :class:`Gate` under this test's tmp dir.
    Every gate is opened at teardown, so no engine of a shared cluster stays
    held by a test that failed before opening it."""
    made: list[Gate] = []

    def make() -> Gate:
        gate = Gate(str(tmp_path / f"gate-{len(made)}"))
        made.append(gate)
        return gate

    try:
        yield make
    finally:
        for gate in made:
            gate.open()


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


# --- real batch systems: one of each per test session, started on first use (batchbeds) -----------


@pytest.fixture(scope="session")
def slurm_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmBed]:
    """A single-node Slurm (its PBS/Torque wrappers: ``pbs_env()``)."""
    require("slurm")
    with SlurmBed(tmp_path_factory.mktemp("slurm-bed")) as bed:
        yield bed


@pytest.fixture(scope="session")
def sge_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridEngineBed]:
    require("sge")
    with GridEngineBed(tmp_path_factory.mktemp("sge-bed")) as bed:
        yield bed


@pytest.fixture(scope="session")
def condor_bed() -> Iterator[CondorBed]:
    require("condor")
    directory = condor_directory()
    try:
        with CondorBed(directory) as bed:
            yield bed
    finally:
        shutil.rmtree(directory, ignore_errors=True)
