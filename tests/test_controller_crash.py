"""A controller SIGKILLed and started again with ``--reuse``: engines come back
with their ids, clients reconnect, and every task in flight at the crash ends
as docs/controller-and-engines.md ("When the controller crashes") says.
Real controller and engine processes, killed by PID."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import zmq

from cluster_launcher import Client
from cluster_launcher.error import EngineError, TaskLost
from cluster_launcher.protocol import connection
from cluster_launcher.protocol.session import Session
from cluster_launcher.testing.processes import LocalCluster, wait_for, wait_for_gate

FAST_HEARTBEAT = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_timeout=2")
# Engines wait this long for a lost controller (Engine.timeout): the restart comes well within it.
PATIENT_ENGINES = "--Engine.timeout=30"


@pytest.fixture
def cluster(tmp_path) -> Iterator[LocalCluster]:
    running = LocalCluster(str(tmp_path), controller_args=(*FAST_HEARTBEAT, "--reuse"))
    yield running
    running.stop()


def engines_by_id(profile_dir: str) -> dict[int, str]:
    """Engine id -> uuid, as a client connecting now sees them."""
    with Client(profile_dir=profile_dir, timeout=10) as probe:
        return {eid: info["uuid"] for eid, info in probe.engines.items()}


def crash_and_restart(cluster: LocalCluster, *controller_args: str) -> None:
    assert cluster.controller is not None
    cluster.controller.stop(signal.SIGKILL)
    cluster.start_controller(*controller_args)


def test_engines_come_back_with_their_ids_and_old_and_new_clients_run_tasks_on_each(cluster):
    cluster.start_controller()
    cluster.start_engines(2, PATIENT_ENGINES)
    client = cluster.client(2)
    try:
        before = dict(client.engines)
        pids = {eid: client[eid].apply_sync(os.getpid) for eid in client.ids}
        crash_and_restart(cluster)
        # Started right after the crash: it registers before the old engines notice, and must not
        # take one of their ids.
        newcomer = cluster.start_engines(1, PATIENT_ENGINES)[0]
        wait_for(lambda: len(engines_by_id(cluster.profile_dir)) == 3, 20, "the old engines and the new one")
        after = engines_by_id(cluster.profile_dir)
        assert {eid: after[eid] for eid in before} == {eid: info["uuid"] for eid, info in before.items()}
        (new_id,) = set(after) - set(before)
        assert new_id > max(before)
        wait_for(lambda: len(client.ids) == 3, 10, "the old client to see the new engine")
        for eid, pid in pids.items():
            assert client[eid].apply_sync(os.getpid) == pid
        assert client[new_id].apply_sync(os.getpid) == newcomer.pid
        with Client(profile_dir=cluster.profile_dir, timeout=10) as fresh:
            assert {eid: fresh[eid].apply_sync(os.getpid) for eid in pids} == pids
    finally:
        client.close()


def test_running_task_completes_and_a_queued_one_is_lost_clearly_without_a_persistent_db(cluster, make_gate, tmp_path):
    cluster.start_controller()
    cluster.start_engines(1, PATIENT_ENGINES)
    client = cluster.client(1)
    try:
        gate, started = make_gate(), str(tmp_path / "started")
        running = client[0].apply_async(_started_then_wait, started, gate.path)
        view = client.load_balanced_view()
        with view.temp_flags(after=running):
            queued = view.apply_async(lambda: "never runs")  # waits in the controller for `running`
        wait_for(lambda: os.path.exists(started), 20, "the task to start on its engine")
        crash_and_restart(cluster)
        wait_for(lambda: engines_by_id(cluster.profile_dir) == {0: client.engines[0]["uuid"]}, 20,
                 "engine 0 to come back")
        # DictDB died with the controller: the client is told, it does not wait for ever.
        with pytest.raises(TaskLost, match="controller restarted and lost task .*sqlite"):
            queued.get(timeout=15)
        gate.open()
        assert running.get(timeout=15) == "ran through the crash"
        # Its result was recorded by the new controller, like any other.
        with Client(profile_dir=cluster.profile_dir, timeout=10) as fresh:
            assert fresh.get_result(running.msg_ids[0]).get(timeout=10) == "ran through the crash"
        assert client[0].apply_sync(lambda: "next") == "next"
    finally:
        client.close()


def test_with_sqlite_a_queued_task_is_resubmitted_and_one_on_an_engine_that_stays_dead_fails(
        cluster, make_gate, tmp_path):
    cluster.start_controller("--db=sqlite")
    engines = cluster.start_engines(2, PATIENT_ENGINES)
    client = cluster.client(2)
    try:
        gate = make_gate()
        started = [str(tmp_path / f"started-{i}") for i in range(2)]
        running = client[0].apply_async(_started_then_wait, started[0], gate.path)
        doomed = client[1].apply_async(_started_then_wait, started[1], gate.path)
        view = client.load_balanced_view()
        with view.temp_flags(after=running):
            queued = view.apply_async(lambda: "resubmitted")
        wait_for(lambda: all(os.path.exists(s) for s in started), 20, "both tasks to start")
        # Until the records say where the tasks run (SQLiteDB writes behind), the crash
        # would come before the database knows them.
        wait_for(lambda: all(r["engine_uuid"] for r in client.db_query(
            {"msg_id": {"$in": [*running.msg_ids, *doomed.msg_ids]}}, ["engine_uuid"])), 10, "the records")
        engine_1 = next(e for e in engines if e.pid == client.engines[1]["pid"])
        engine_1.stop(signal.SIGKILL)
        crash_and_restart(cluster, "--db=sqlite")
        with pytest.raises(EngineError, match="engine 1 was running this task .* did not come back"):
            doomed.get(timeout=15)
        gate.open()
        assert running.get(timeout=15) == "ran through the crash"
        assert queued.get(timeout=15) == "resubmitted"
        assert queued.engine_id == 0
    finally:
        client.close()


@pytest.mark.parametrize("db", ["dict", "sqlite"])
def test_a_task_that_finishes_while_no_controller_runs_reaches_its_client(cluster, make_gate, tmp_path, db):
    cluster.start_controller(f"--db={db}")
    cluster.start_engines(1, PATIENT_ENGINES)
    client = cluster.client(1)
    try:
        gate, started, finished = make_gate(), str(tmp_path / "started"), str(tmp_path / "finished")
        ar = client[0].apply_async(_wait_then_mark, started, gate.path, finished)
        wait_for(lambda: os.path.exists(started), 20, "the task to start")
        assert cluster.controller is not None
        cluster.controller.stop(signal.SIGKILL)
        gate.open()
        wait_for(lambda: os.path.exists(finished), 20, "the task to finish with no controller")
        cluster.start_controller(f"--db={db}")
        assert ar.get(timeout=15) == "finished alone"
        assert client[0].apply_sync(lambda: "next") == "next"
    finally:
        client.close()


def test_a_registration_from_the_heartbeat_socket_waits_for_the_task_socket_and_a_repeat_changes_nothing(cluster):
    """What an engine's heartbeat thread does after a restart, spoken by hand."""
    cluster.start_controller()
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "engine"), "engine")
    session = Session(key=info["key"])
    context = zmq.Context()
    heartbeat, tasks = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
    try:
        heartbeat.setsockopt(zmq.IDENTITY, b"by-hand-hb")
        tasks.setsockopt(zmq.IDENTITY, b"by-hand")
        tasks.setsockopt(zmq.RCVTIMEO, 10_000)  # a message that never comes fails the test (zmq.Again)
        heartbeat.connect(connection.url(info, "heartbeat_port"))
        fields = {"uuid": "f" * 32, "hostname": "here", "pid": os.getpid(), "domain": None, "mpi": None,
                  "deadline": None, "draining": False, "engine_id": 7,
                  "held": [{"started": True, "header": {"type": "apply", "id": "e" * 32, "session": "s" * 32,
                                                        "queue": "task", "targets": None, "after": [], "follow": [],
                                                        "timeout": None, "retries": 0}}]}

        def registered() -> dict | None:
            session.send(heartbeat, "register", fields)
            if not heartbeat.poll(1000):
                return None
            return session.recv(heartbeat).header

        # Not before its task socket is connected: a task sent there now would be lost.
        assert registered() is None
        tasks.connect(connection.url(info, "engine_port"))
        reply = wait_for(registered, 20, "the registration to be accepted")
        assert isinstance(reply, dict) and reply["engine_id"] == 7  # the id it asked for: nobody's
        assert session.recv(tasks).type == "reconnected"  # what the controller checked the task socket with
        again = wait_for(registered, 10, "the repeated registration's answer")
        assert isinstance(again, dict) and again["engine_id"] == 7
        assert engines_by_id(cluster.profile_dir) == {7: "f" * 32}
        with Client(profile_dir=cluster.profile_dir, timeout=10) as probe:
            assert probe.queue_status(7)["queue"] == 1  # the task it holds is still in flight there
            # Handed back by a draining engine, it cannot go elsewhere (the controller never had its
            # message): it fails, rather than waiting in the queue as an empty message.
            session.send(tasks, "drain", {"reason": "test", "msg_ids": ["e" * 32]})
            # (after the probes of the repeated registrations)
            assert next(t for t in (session.recv(tasks).type for _ in range(10)) if t != "reconnected") == "drain_reply"
            status = probe.queue_status()
            assert (status[7]["queue"], status["unassigned"]) == (0, 0)
        session.send(tasks, "unregister", {"reason": "shutdown"})
        wait_for(lambda: engines_by_id(cluster.profile_dir) == {}, 10, "the engine to leave")
    finally:
        heartbeat.close(0)
        tasks.close(0)
        context.term()


def _wait_then_mark(started: str, gate: str, finished: str) -> str:
    wait_for_gate(gate, started=started)
    open(finished, "w").close()  # the reply leaves right after: into the engine's queue for the controller
    return "finished alone"


def _started_then_wait(started: str, gate: str) -> str:
    wait_for_gate(gate, started=started)
    return "ran through the crash"
