"""Load balancing against a real controller and engines: every scheduler
plugin by name, the high-water mark, retries on another engine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster_launcher import plugins
from cluster_launcher.error import RemoteError
from cluster_launcher.testing.processes import wait_for, wait_for_gate

pytestmark = pytest.mark.timeout(60)

SCHEMES = ["leastload", "lru", "twobin", "weighted", "plainrandom"]


@pytest.fixture
def client(local_cluster):
    c = local_cluster.client()
    yield c
    c.close()


def _wait_for_gate(gate: str, started: str | None = None) -> None:
    """Run on an engine: create ``started`` (if given), then wait until the
    test opens ``gate`` (conftest's ``make_gate``)."""
    if started is not None:
        open(started, "w").close()
    wait_for_gate(gate)


def _fail_on(bad_pid: int, attempts_file: str) -> int:
    with open(attempts_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    if os.getpid() == bad_pid:
        raise RuntimeError(f"refusing to run in pid {bad_pid}")
    return os.getpid()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_runs_load_balanced_tasks(make_cluster, scheme):
    cluster = make_cluster(n=2, controller_args=(f"--TaskScheduler.scheme_name={scheme}",))
    with cluster.client() as client:
        lview = client.load_balanced_view()
        results = [lview.apply_async(pow, i, 2) for i in range(20)]
        assert [ar.get(10) for ar in results] == [i * i for i in range(20)]
        used = {ar.metadata.engine_id for ar in results}
        assert used <= set(client.ids)
        if scheme in ("leastload", "lru"):  # deterministic: idle engines take turns
            assert used == {0, 1}


def test_unknown_scheme_is_a_one_line_error_listing_the_installed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cluster_launcher", "controller", f"--profile-dir={tmp_path}",
         "--TaskScheduler.scheme_name=leastloaded"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TaskScheduler.scheme_name" in lines[0] and "'leastloaded'" in lines[0]
    for name in plugins.get_registry().names("scheduler"):
        assert name in lines[0]
    assert not os.path.exists(tmp_path / "security" / "controller-client.json")


def test_hwm_1_keeps_one_task_per_engine_and_the_rest_unassigned(make_cluster, make_gate, tmp_path):
    cluster = make_cluster(n=2, controller_args=("--TaskScheduler.hwm=1",))
    with cluster.client() as client:
        lview = client.load_balanced_view()
        # Each task marks that it started, then waits at a gate of its own: the
        # test lets the running ones finish, two at a time.
        gates = [make_gate() for _ in range(6)]
        started = [tmp_path / f"started-{i}" for i in range(6)]
        results = [lview.apply_async(_wait_for_gate, gate.path, str(mark))
                   for gate, mark in zip(gates, started, strict=True)]
        released: set[int] = set()

        def running() -> set[int]:
            return {i for i, mark in enumerate(started) if mark.exists()} - released

        def check(status):
            in_flight = [status[e]["tasks"] for e in (0, 1)]
            assert max(in_flight) <= 1 and max(status[e]["queue"] for e in (0, 1)) <= 1, status
            done = sum(status[e]["completed"] for e in (0, 1))
            assert sum(in_flight) + status["unassigned"] + done == 6, status
            return in_flight, done

        # Both engines busy, the rest waiting in the controller: four, then two, then none.
        for unassigned in (4, 2, 0):
            wait_for(lambda: len(running()) >= 2, 20, "a task to start on each engine")
            now = running()
            status = client.queue_status()
            assert check(status) == ([1, 1], 4 - unassigned) and status["unassigned"] == unassigned, status
            assert len(now) == 2, f"tasks {sorted(now)} run at once on two engines with hwm=1"
            for i in now:
                gates[i].open()
            released |= now
        assert [ar.get(20) for ar in results] == [None] * 6
        assert check(client.queue_status()) == ([0, 0], 6)
        assert {ar.metadata.engine_id for ar in results} == {0, 1}


def test_hwm_0_hands_every_task_out_at_once(client, make_gate):
    # hwm=0 is the default of the module's cluster
    lview = client.load_balanced_view()
    gate = make_gate()
    results = [lview.apply_async(_wait_for_gate, gate.path) for _ in range(6)]  # none can finish yet
    status = client.queue_status()  # answered after the controller took the tasks (same socket, in order)
    assert status["unassigned"] == 0
    assert status[0]["tasks"] + status[1]["tasks"] == 6 and status[0]["tasks"] == status[1]["tasks"] == 3
    gate.open()
    assert [ar.get(20) for ar in results] == [None] * 6


def test_unassigned_counts_a_task_waiting_on_two_dependencies_once(client, make_gate):
    lview = client.load_balanced_view()
    gate = make_gate()
    first, second = (lview.apply_async(_wait_for_gate, gate.path) for _ in range(2))  # unmet until the gate opens
    with lview.temp_flags(after=[first, second]):
        waiting = lview.apply_async(pow, 2, 5)
    assert client.queue_status()["unassigned"] == 1
    gate.open()
    assert waiting.get(20) == 32


def test_a_failed_task_is_retried_on_the_other_engine(client, tmp_path, make_gate):
    bad_pid = client[0].apply_sync(os.getpid)
    good_pid = client[1].apply_sync(os.getpid)
    lview = client.load_balanced_view()
    # Keep engine 1 busy (at a gate) so that leastload sends the task to engine 0
    # first, and would send the retry there again if failed engines were not excluded.
    gate = make_gate()
    with lview.temp_flags(targets=[1]):
        busy = lview.apply_async(_wait_for_gate, gate.path)
    attempts = tmp_path / "attempts"
    with lview.temp_flags(retries=1):
        flaky = lview.apply_async(_fail_on, bad_pid, str(attempts))
    # The first attempt failed on engine 0 and the retry waits on engine 1, behind `busy`.
    wait_for(lambda: client.queue_status()[1]["queue"] == 2, 20, "the retry to be sent to engine 1")
    assert attempts.read_text().split() == [str(bad_pid)] and not flaky.ready()
    gate.open()
    assert flaky.get(20) == good_pid
    first_engine = next(e for e, info in client.engines.items() if info["pid"] == bad_pid)
    assert attempts.read_text().split() == [str(bad_pid), str(good_pid)]
    assert flaky.metadata.engine_id == 1 != first_engine
    busy.get(20)
    # Without retries, the same task fails where it first landed.
    with lview.temp_flags(targets=[0]):
        with pytest.raises(RemoteError, match="refusing"):
            lview.apply_sync(_fail_on, bad_pid, str(attempts))


def test_retry_with_no_other_engine_ends_with_the_tasks_own_error(make_cluster):
    cluster = make_cluster(n=1)
    with cluster.client() as client:
        view = client.load_balanced_view()
        with view.temp_flags(retries=3):
            ar = view.apply_async(lambda: 1 / 0)
        with pytest.raises(RemoteError) as failure:
            ar.get(timeout=10)
        assert failure.value.ename == "ZeroDivisionError"
