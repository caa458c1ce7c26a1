"""Walltime-aware engines with real processes: an engine whose job nears its
deadline (or that gets SIGUSR1) drains: the controller gives it no new task,
the task it runs finishes, those it holds unstarted go to another engine,
and it unregisters and exits with code 0.  (The queue's rules themselves:
core/tests/test_taskqueue.py; against real Slurm: tests/test_batch_systems.py.)"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cluster_launcher import Client
from cluster_launcher.engine.engine import deadline_from_environment
from cluster_launcher.error import TaskTimeout
from cluster_launcher.testing.processes import LocalCluster, Process, wait_for, wait_for_gate

FAST_HEARTBEAT = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_timeout=5")


@pytest.fixture
def cluster(tmp_path):
    running = LocalCluster(str(tmp_path), controller_args=FAST_HEARTBEAT)
    running.start_controller()
    yield running
    running.stop()


def _pid_at_gate(gate: str, started: str) -> int:
    """Run on an engine: say it started, wait at ``gate``, give the engine's pid."""
    wait_for_gate(gate, started=started)
    return os.getpid()


def _status(client: Client, engine_id: int) -> dict:
    return client.queue_status().get(engine_id, {})


def _hold_two_tasks(cluster: LocalCluster, client: Client, doomed_id: int, make_gate, tmp_path) -> tuple:
    """On engine ``doomed_id`` (the only one): one task running at a gate,
    one queued behind it."""
    gate, started = make_gate(), tmp_path / "started"
    view = client.load_balanced_view()
    running = view.apply_async(_pid_at_gate, gate.path, str(started))
    queued = view.apply_async(os.getpid)
    wait_for(lambda: started.exists(), 20, "the first task to start")
    assert _status(client, doomed_id)["queue"] == 2  # the second waits on the engine itself
    return gate, running, queued


def _check_drained(cluster: LocalCluster, client: Client, doomed: Process, doomed_id: int, gate, running, queued,
                   said: str) -> None:
    """Another engine comes; the gate opens: the running task ends on the
    draining engine, the queued one on the other, and the draining one leaves."""
    wait_for(lambda: _status(client, doomed_id).get("draining"), 20, "the controller to see the engine draining")
    (other,) = cluster.start_engines(1)
    wait_for(lambda: len(client.ids) == 2, 20, "the second engine to register")
    gate.open()
    assert running.get(timeout=20) == doomed.pid
    assert queued.get(timeout=20) == other.pid  # handed back, not failed, not retried (retries=0)
    assert doomed.wait(timeout=20) == 0, doomed.output()
    wait_for(lambda: client.ids == [doomed_id + 1], 10, "the drained engine to leave client.ids")
    output = doomed.output()
    assert f"draining: {said}" in output, output
    assert "Traceback" not in output, output


def test_an_engine_drains_before_its_deadline_and_exits_cleanly(cluster, make_gate, tmp_path):
    # The job ends in 60 s and the engine drains 40 s before: in 20 s, long after the tasks are on it (an
    # engine reads its deadline once, at start: the tasks must be on it before the clock says drain).
    deadline = time.time() + 60
    doomed = Process("engine", cluster.profile_dir, "--Engine.drain_margin=40",
                     env={"CLUSTER_LAUNCHER_ENGINE_DEADLINE": f"{deadline:.3f}"})
    cluster.engines.append(doomed)
    with cluster.client(n=1) as client:
        (doomed_id,) = client.ids
        status = _status(client, doomed_id)
        assert status["deadline"] == pytest.approx(deadline, abs=0.01)
        assert status["draining"] is False and status["idle_since"] <= time.time()
        gate, running, queued = _hold_two_tasks(cluster, client, doomed_id, make_gate, tmp_path)
        assert _status(client, doomed_id)["idle_since"] is None
        _check_drained(cluster, client, doomed, doomed_id, gate, running, queued, "")
        assert re.search(r"draining: \d+ s before the job's walltime", doomed.output())


def test_sigusr1_drains_an_engine_at_once(cluster, make_gate, tmp_path):
    (doomed,) = cluster.start_engines(1)
    with cluster.client(n=1) as client:
        (doomed_id,) = client.ids
        assert _status(client, doomed_id)["deadline"] is None
        gate, running, queued = _hold_two_tasks(cluster, client, doomed_id, make_gate, tmp_path)
        os.kill(doomed.pid, signal.SIGUSR1)
        _check_drained(cluster, client, doomed, doomed_id, gate, running, queued, "SIGUSR1")


def test_a_task_goes_only_to_an_engine_with_time_left_for_its_expected_runtime(cluster):
    soon = time.time() + 3600
    cluster.start_engines(1, f"--Engine.deadline={soon}")
    (later,) = cluster.start_engines(1, f"--Engine.deadline={soon + 7200}")
    with cluster.client(n=2) as client:
        view = client.load_balanced_view()
        with view.temp_flags(expected_runtime=2 * 3600):
            pids = {ar.get(timeout=20) for ar in [view.apply_async(os.getpid) for _ in range(4)]}
        assert pids == {later.pid}
        view.set_flags(expected_runtime=5 * 3600, timeout=1)  # no engine has that long: it waits, then times out
        with pytest.raises(TaskTimeout, match="waited 1.0s for its dependencies or an engine"):
            view.apply_sync(os.getpid)
        view.set_flags(expected_runtime=-1)
        with pytest.raises(ValueError, match="LoadBalancedView.expected_runtime: a finite number of seconds >= 0"):
            view.apply_async(os.getpid)


def test_the_deadline_comes_from_the_job_scripts_export_else_from_slurms():
    assert deadline_from_environment({"CLUSTER_LAUNCHER_ENGINE_DEADLINE": "2000", "SLURM_JOB_END_TIME": "3000"}) == 2000
    assert deadline_from_environment({"SLURM_JOB_END_TIME": "3000"}) == 3000
    assert deadline_from_environment({"CLUSTER_LAUNCHER_ENGINE_DEADLINE": "soon", "SLURM_JOB_END_TIME": "0"}) == 0
    assert deadline_from_environment({}) == 0
