"""Fixtures for cross-package tests: real controller and engine processes.

``local_cluster`` (one per test module) is a controller and two engines
started as ``python -m cluster_launcher controller|engine --profile-dir=...``
in a temp profile; ``make_cluster`` starts extra ones a test may break (shut
down, kill).  Every process is stopped by the PID it was started with, and
teardown fails the test if one is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_launcher import connection

START_TIMEOUT = 20.0


class LocalCluster:
    """A controller and ``n`` engines as subprocesses of the test."""

    def __init__(self, profile_dir: Path, n: int = 2, controller_args: tuple[str, ...] = ()):
        self.profile_dir = str(profile_dir)
        self.n = n
        self.controller_args = controller_args
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self.log_dir = profile_dir / "test-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def client_file(self) -> str:
        return connection.connection_file(self.profile_dir, "client")

    def _spawn(self, role: str, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        try:
            return subprocess.Popen([sys.executable, "-m", "cluster_launcher", role,
                                     f"--profile-dir={self.profile_dir}", *args],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def start(self) -> LocalCluster:
        self.controller = self._spawn("controller", "controller", *self.controller_args)
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(connection.connection_file(self.profile_dir, "engine")):
            if self.controller.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller did not start:\n{self.logs()}")
            time.sleep(0.05)
        self.add_engines(self.n)
        return self

    def add_engines(self, n: int) -> None:
        for _ in range(n):
            self.engines.append(self._spawn("engine", f"engine-{len(self.engines)}"))

    def client(self, n: int | None = None, **kwargs):
        """A connected Client once ``n`` (default: all started) engines registered."""
        from cluster_launcher import Client
        client = Client(profile_dir=self.profile_dir, timeout=10, **kwargs)
        try:
            client.wait_for_engines(len(self.engines) if n is None else n, timeout=START_TIMEOUT)
        except BaseException:
            client.close()
            raise
        return client

    def processes(self) -> list[subprocess.Popen]:
        return [p for p in (self.controller, *self.engines) if p is not None]

    def stop(self) -> None:
        """SIGTERM each process by its PID, SIGKILL what has not exited in 10 s."""
        for process in self.processes():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def stray(self) -> list[int]:
        return [p.pid for p in self.processes() if p.poll() is None]

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(self.log_dir.glob("*.log")))


def _stop_and_check(cluster: LocalCluster) -> None:
    cluster.stop()
    left = cluster.stray()
    assert not left, f"processes still running after stop: {left}"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("profile"), n=2)
    try:
        yield cluster.start()
    finally:
        _stop_and_check(cluster)


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
            _stop_and_check(cluster)
