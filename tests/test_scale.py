"""The controller at scale (issue #19): a registration storm of stand-in
engines (:mod:`cluster_launcher.testing.standin`), the open-file limit, and
heartbeats with the CPU saturated.  docs/internals/scale.md has the numbers."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator

import cloudpickle
import pytest

from cluster_launcher.testing.processes import LocalCluster, Process, wait_for
from cluster_launcher.testing.standin import REFUSED_MARK, StandInEngines

# Tasks defined here travel by value: engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def controller(tmp_path) -> Iterator[LocalCluster]:
    """A controller without engines (the tests bring their own)."""
    running = LocalCluster(str(tmp_path / "profile"), n=0)
    os.makedirs(running.profile_dir)
    running.start_controller()
    yield running
    running.stop()


def test_200_stand_in_engines_registering_at_once_all_register_and_each_runs_a_noop(controller):
    with StandInEngines(controller.profile_dir, n=200, processes=2) as engines:
        client = controller.client(n=0)
        try:
            ids = client.wait_for_engines(200, timeout=60)
            assert sorted(ids) == list(range(200))
            # A task on each engine by name, and as many load-balanced: every reply is a no-op's None.
            direct = client[:].apply_sync(lambda: "ran")
            assert direct == [None] * 200
            view = client.load_balanced_view()
            balanced = [view.apply_async(lambda: "ran") for _ in range(200)]
            assert [ar.get(timeout=60) for ar in balanced] == [None] * 200
            assert len(client.queue_status()) - 1 == 200  # one entry per engine, plus 'unassigned'
        finally:
            client.close()
        assert engines.running() == 2
    assert engines.refusals() == []
    left = re.findall(r"(\d+) of (\d+) stand-in engines registered and left", engines.output())
    assert sorted(left) == [("100", "100")] * 2, engines.output()
    # They unregistered on the way out.
    client = controller.client(n=0)
    try:
        wait_for(lambda: not client.ids, 30, "the stand-ins to unregister")
    finally:
        client.close()


OPEN_FILE_LIMIT = 200


def _low_open_file_limit() -> None:
    # Soft and hard alike: the controller raises its soft limit to the hard one.
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))


def test_a_controller_at_its_open_file_limit_refuses_more_engines_with_a_clear_error(tmp_path):
    cluster = LocalCluster(str(tmp_path / "profile"), n=0, controller_preexec=_low_open_file_limit)
    os.makedirs(cluster.profile_dir)
    try:
        controller = cluster.start_controller()
        room = wait_for(lambda: re.search(r"room for (\d+) engines", controller.output()), 10,
                        "the controller's open-file line")
        capacity = int(room.group(1))  # type: ignore[union-attr]
        assert 0 < capacity < 50, controller.output()
        # Far more than fit, all at once: their connections alone exceed the limit for a while.
        extra = 100
        with StandInEngines(cluster.profile_dir, n=capacity + extra, processes=2, timeout=30) as engines:
            wait_for(lambda: len(engines.refusals()) == extra, 60, f"{extra} refusals")
            client = cluster.client(n=capacity)
            try:
                assert len(client.ids) == capacity
                assert client[:].apply_sync(lambda: "ran") == [None] * capacity
                # A real engine is refused the same way, and exits with that one line.
                engine = Process("engine", cluster.profile_dir)
                assert engine.wait(30) not in (None, 0), engine.output()
                errors = [line for line in engine.output().splitlines() if REFUSED_MARK in line]
                assert len(errors) == 1 and f"ulimit -n {OPEN_FILE_LIMIT}" in errors[0], engine.output()
                engine.stop()
                assert len(client.ids) == capacity
            finally:
                client.close()
        for line in engines.refusals():
            assert f"ulimit -n {OPEN_FILE_LIMIT}" in line and f"{capacity} engines fit" in line, line
        assert controller.poll() is None
        log = controller.output()
        assert log.count("refused engine registrations") == 1, log[-3000:]
        assert "ulimit -n" in log
    finally:
        cluster.stop()


# --- heartbeats with both cores saturated -------------------------------------------------

HEARTBEAT_ARGS = ("--Controller.heartbeat_period=0.1", "--Controller.heartbeat_max_misses=10")
ENGINES_UNDER_LOAD = 32  # 64 in the benchmark (heartbeats_under_load): 64 starting take most of a minute here
HOG = "import time\nwhile True:\n    pass\n"


def test_no_engine_is_declared_dead_while_cpu_hogs_saturate_the_machine(tmp_path):
    """Real engines, a 0.1 s heartbeat and one second of misses allowed; then
    twice as many busy loops as cores while every engine sleeps 5 s of its own
    clock (fifty heartbeat periods): the controller still has every engine."""
    cluster = LocalCluster(str(tmp_path / "profile"), n=ENGINES_UNDER_LOAD, controller_args=HEARTBEAT_ARGS)
    os.makedirs(cluster.profile_dir)
    hogs: list[subprocess.Popen] = []
    try:
        cluster.start()
        client = cluster.client(n=0)
        try:
            # Engines importing at once on 2 cores take a while: bounded, generously.
            before = sorted(client.wait_for_engines(ENGINES_UNDER_LOAD, timeout=120))
            hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2 * (os.cpu_count() or 2))]
            assert client[:].apply_sync(_sleep_for, 5.0) == [True] * ENGINES_UNDER_LOAD
            assert sorted(client.ids) == before
            assert len(client.queue_status()) - 1 == ENGINES_UNDER_LOAD
        finally:
            client.close()
        assert "declaring it dead" not in cluster.controller.output()  # type: ignore[union-attr]
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
            hog.wait(10)
        cluster.stop()


def _sleep_for(seconds: float) -> bool:
    import time

    time.sleep(seconds)
    return True


def test_stand_ins_refuse_to_start_past_the_hard_open_file_limit_in_one_line(tmp_path):
    """250 stand-ins in one process need about 2,564 files: under a hard limit of 256, start() says so."""
    connection_file = tmp_path / "controller-engine.json"
    connection_file.write_text("{}")  # never read: the limit is checked first
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from cluster_launcher.error import ClusterLauncherError\n"
        "from cluster_launcher.testing.standin import StandInEngines\n"
        f"engines = StandInEngines({str(tmp_path)!r}, n=250, file={str(connection_file)!r})\n"
        "try:\n"
        "    engines.start()\n"
        "except ClusterLauncherError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
        "engines.stop()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.strip().endswith("hard limit (ulimit -Hn) is 256: raise it, or spread them over more processes")
    assert "250 stand-in engines per process need 2564 open files" in done.stdout
