"""The runtime under failure: killed engines, restarted controllers, forged
messages, broken connection files.  Real controller and engine processes."""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest
import zmq

from cluster_launcher import Client
from cluster_launcher.error import ConnectionFileError, EngineError, TaskAborted
from cluster_launcher.protocol import connection
from cluster_launcher.protocol.session import Session
from cluster_launcher.testing.processes import LocalCluster, Process, wait_for, wait_for_gate

FAST_HEARTBEAT = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_timeout=2")


@pytest.fixture
def cluster(tmp_path):
    running = LocalCluster(str(tmp_path), controller_args=FAST_HEARTBEAT)
    yield running
    running.stop()


def connect(profile_dir: str, engines: int) -> Client:
    client = Client(profile_dir=profile_dir, timeout=10)
    wait_for(lambda: len(client.ids) >= engines, 15, f"{engines} engines to register")
    return client


def _started_then_wait(started: str, gate: str) -> int:
    """Run on an engine: append this engine's pid to ``started`` (the test's
    sign that the task runs, and where), then wait at ``gate``."""
    with open(started, "a") as f:
        f.write(f"{os.getpid()}\n")
    wait_for_gate(gate)
    return os.getpid()


def _started_pids(started) -> list[int]:
    """The pids ``_started_then_wait`` wrote to ``started`` (a Path), complete lines only."""
    text = started.read_text() if started.exists() else ""
    return [int(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def test_connection_files_are_private_and_carry_ip_and_location(cluster):
    cluster.start_controller("--ip=*", "--location=127.0.0.1")
    for role in ("client", "engine"):
        path = connection.connection_file(cluster.profile_dir, role)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        info = connection.read_connection_file(path, role)
        assert info["location"] == "127.0.0.1"
    import psutil
    listening = {c.laddr.ip for c in psutil.Process(cluster.controller.pid).net_connections() if c.status == "LISTEN"}
    assert listening == {"0.0.0.0"}, listening
    cluster.start_engines(1)
    with connect(cluster.profile_dir, 1) as client:
        assert client[0].apply_sync(lambda: 6 * 7) == 42


def test_default_listens_on_loopback_only(cluster):
    cluster.start_controller()
    import psutil
    listening = {c.laddr.ip for c in psutil.Process(cluster.controller.pid).net_connections() if c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    assert info["location"] == "127.0.0.1"


def test_forged_message_is_dropped_and_logged(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    forger = Session(key=b"not-the-key")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(connection.url(info, "client_port"))
    try:
        # A forged shutdown of the whole cluster, and a frame soup with no signature.
        forger.send(sock, "shutdown", {"session": "evil", "hub": True})
        sock.send_multipart([b"<CL1>", b"", b'{"type": "shutdown", "hub": true}'])
        wait_for(lambda: cluster.controller.output().count("dropped a message") >= 2, 10, "the drop to be logged")
        assert "bad signature" in cluster.controller.output()
        with connect(cluster.profile_dir, 1) as client:  # still serving
            assert client[0].apply_sync(lambda: "alive") == "alive"
        assert cluster.controller.popen.poll() is None
    finally:
        sock.close(0)
        context.term()


def test_engine_killed_mid_task_fails_the_task_with_engine_error(cluster, tmp_path, make_gate):
    cluster.start_controller()
    cluster.start_engines(1)
    started = tmp_path / "started"
    with connect(cluster.profile_dir, 1) as client:
        ar = client.load_balanced_view().apply_async(_started_then_wait, str(started), make_gate().path)
        wait_for(lambda: _started_pids(started), 15, "the task to start on the engine")
        cluster.engines[0].stop(signal.SIGKILL)
        with pytest.raises(EngineError) as failure:
            ar.get(timeout=15)
        assert "engine 0" in str(failure.value) and "died" in str(failure.value)
        wait_for(lambda: client.ids == [], 5, "the dead engine to leave client.ids")


def test_engine_killed_mid_task_is_retried_elsewhere(cluster, tmp_path, make_gate):
    cluster.start_controller()
    cluster.start_engines(2)
    with connect(cluster.profile_dir, 2) as client:
        pids = {eid: client[eid].apply_sync(os.getpid) for eid in client.ids}
        victim_id, other_id = client.ids
        view = client.load_balanced_view(targets=None)
        view.retries = 1
        # follow nothing; pin the first attempt by keeping the other engine busy (at a gate) first
        gate = make_gate()
        busy = client[other_id].apply_async(wait_for_gate, gate.path)
        started = tmp_path / "started"
        ar = view.apply_async(_started_then_wait, str(started), gate.path)
        wait_for(lambda: _started_pids(started), 15, "the task to start on an engine")
        assert _started_pids(started) == [pids[victim_id]]
        victim = next(p for p in cluster.engines if p.pid == pids[victim_id])
        victim.stop(signal.SIGKILL)
        gate.open()  # the other engine finishes `busy`, then takes the retry
        assert ar.get(timeout=20) == pids[other_id] != pids[victim_id]
        assert _started_pids(started) == [pids[victim_id], pids[other_id]]
        busy.get(timeout=10)


def test_engine_exits_when_controller_goes_away(cluster):
    cluster.start_controller()
    (engine,) = cluster.start_engines(1, "--Engine.timeout=2")
    with connect(cluster.profile_dir, 1):
        pass
    cluster.controller.stop(signal.SIGKILL)
    assert engine.wait(timeout=15) is not None, "engine still running 15s after the controller died"
    assert "exiting" in engine.output()


def test_reuse_keeps_ports_and_key_and_engines_and_clients_reconnect(cluster):
    cluster.start_controller("--reuse")
    cluster.start_engines(2, "--Engine.timeout=20")
    path = connection.connection_file(cluster.profile_dir, "client")
    with open(path) as f:
        before = json.load(f)
    client = connect(cluster.profile_dir, 2)
    try:
        client[:].push({"kept": "state"}, block=True)
        cluster.controller.stop()
        assert os.path.exists(path), "--reuse must keep the connection files"
        cluster.start_controller("--reuse")
        with open(path) as f:
            assert json.load(f) == before  # same ports, same key
        # The old client and the old engines reconnect by themselves.
        wait_for(lambda: _engines_on_controller(cluster.profile_dir) == 2, 20, "engines to re-register")
        assert client.load_balanced_view().apply_async(lambda: "after restart").get(timeout=10) == "after restart"
        with connect(cluster.profile_dir, 2) as fresh:
            assert sorted(fresh[:].pull("kept", block=True)) == ["state", "state"]  # engines kept their namespace
    finally:
        client.close()


def _engines_on_controller(profile_dir: str) -> int:
    with Client(profile_dir=profile_dir, timeout=5) as probe:
        return len(probe.ids)


def test_corrupted_connection_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "controller-engine.json"
    bad.write_text('{"key": "abc", "location": ')
    engine = Process("engine", str(tmp_path), f"--file={bad}")
    assert engine.wait(timeout=20) not in (None, 0)
    lines = [line for line in engine.output().splitlines() if line.strip()]
    assert lines[-1].startswith("cluster-launcher: error:") and str(bad) in lines[-1], lines
    assert "Traceback" not in engine.output()
    engine.stop()

    client_file = tmp_path / "controller-client.json"
    client_file.write_text(json.dumps({"key": "k", "signature_scheme": "hmac-sha256", "location": "127.0.0.1",
                                       "client_port": "not a port", "ssh": "", "cluster_id": "", "transport": "tcp"}))
    with pytest.raises(ConnectionFileError, match="client_port"):
        Client(url_file=str(client_file), timeout=2)


def _our_shm_files() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("cluster-launcher-")}


def test_large_buffers_through_shared_memory_arrive_intact_and_leave_nothing(cluster, make_gate):
    import numpy as np

    before = _our_shm_files()
    cluster.start_controller()
    cluster.start_engines(1)
    with connect(cluster.profile_dir, 1) as client:
        data = np.arange(3 * 1024 * 1024 // 8, dtype="float64")  # 3 MB: over the 256 KiB bulk threshold
        client[0].push({"data": data}, block=True)
        ar = client[0].apply_async(lambda: data * 2)
        doubled = ar.get(timeout=20)
        assert np.array_equal(doubled, data * 2)
        doubled[0] = -1.0  # what a client receives is writable
        # The controller kept its own copy for the task database (ask it from a client without a cache).
        with Client(profile_dir=cluster.profile_dir, timeout=10) as other:
            again = other.get_result(ar.msg_ids[0]).get(timeout=10)
        assert np.array_equal(again, data * 2)
        # A task aborted before it ran: the client removes the file an engine never read.
        gate = make_gate()
        blocker = client[0].apply_async(wait_for_gate, gate.path)
        doomed = client[0].apply_async(lambda x: x, data)  # queued behind `blocker`
        assert client.abort(doomed) == doomed.msg_ids
        gate.open()
        with pytest.raises(TaskAborted, match="the task was aborted before it ran"):
            doomed.get(timeout=10)
        blocker.get(timeout=10)
    wait_for(lambda: _our_shm_files() == before, 5, "shared-memory files to be removed")


def test_seed_controller_args_log_to_file(cluster):
    """The seed's ``c.LocalControllerLauncher.controller_args = ['--log-to-file', '--log-level=20']``."""
    cluster.start_controller("--log-to-file", "--log-level=20")
    log_dir = os.path.join(cluster.profile_dir, "log")
    path = os.path.join(log_dir, f"controller-{cluster.controller.pid}.log")
    wait_for(lambda: os.path.exists(path) and "listening" in open(path).read(), 10, "the controller's log file")


def test_unsupported_mpi_binding_is_a_one_line_error(tmp_path):
    engine = Process("engine", str(tmp_path), "--Engine.mpi=pypar")
    assert engine.wait(timeout=20) == 2
    assert engine.output().strip().splitlines()[-1] == (
        "cluster-launcher: error: Engine.mpi='pypar': the only MPI binding supported is 'mpi4py'")
    engine.stop()


def test_engines_started_before_the_controller_wait_for_it(cluster, tmp_path):
    # An engine runs its start-up script just before it looks for the
    # connection file: the script's mark says the engine is up and waiting.
    marks = tmp_path / "waiting"
    marks.mkdir()
    script = tmp_path / "mark_waiting.py"
    script.write_text(f"import os\nopen(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\n")
    engines = cluster.start_engines(2, f"--Engine.startup_script={script}")
    wait_for(lambda: sorted(os.listdir(marks)) == sorted(str(e.pid) for e in engines), 20,
             "both engines to be up and waiting for the connection file")
    assert all(engine.popen.poll() is None for engine in cluster.engines)
    cluster.start_controller()
    with connect(cluster.profile_dir, 2) as client:
        assert sorted(client[:].apply_sync(os.getpid)) == sorted(e.pid for e in cluster.engines)


def test_malformed_but_signed_requests_get_errors_and_the_controller_goes_on(cluster):
    """A client with the key but a bug: wrong field types get an error reply."""
    cluster.start_controller()
    cluster.start_engines(1)
    with connect(cluster.profile_dir, 1) as client:
        info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
        session = Session(key=info["key"])
        context = zmq.Context()
        request, reply = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
        reply.setsockopt(zmq.IDENTITY, b"r-" + session.session_id.encode())
        try:
            for sock in (request, reply):
                sock.connect(connection.url(info, "client_port"))
            wait_for(lambda: (session.send(request, "connect", {"session": session.session_id}),
                              reply.poll(200))[1], 10, "connect_reply")
            session.recv(reply)
            for fields in ({"msg_ids": 5}, {"targets": "all", "msg_ids": None}):
                session.send(request, "abort", {"session": session.session_id, **fields})
                assert reply.poll(5000), "no reply to a malformed request"
                answer = session.recv(reply)
                assert answer.type == "abort_reply" and answer.header["status"] == "error", answer.header
            session.send(request, "apply", {"session": session.session_id, "queue": "task", "targets": 7})
            assert reply.poll(5000)
            assert session.recv(reply).header["status"] == "error"
        finally:
            request.close(0)
            reply.close(0)
            context.term()
        assert client[0].apply_sync(lambda: "still serving") == "still serving"
    assert cluster.controller.popen.poll() is None


def test_curve_encryption(cluster):
    """With --curve every socket is encrypted: engines and clients that read the
    connection file talk; a peer speaking plain zmq never completes a handshake."""
    cluster.start_controller("--curve", "--reuse")
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    assert len(info["curve_serverkey"]) == 40
    key_file = connection.connection_file(cluster.profile_dir, "curve")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600  # the server's secret key
    cluster.start_engines(1, "--Engine.timeout=20")
    with connect(cluster.profile_dir, 1) as client:
        assert client[0].apply_sync(lambda: "secret") == "secret"
    plain_file = os.path.join(cluster.profile_dir, "plain-client.json")
    connection.write_private_json(plain_file, dict(info, curve_serverkey=""))
    with pytest.raises(TimeoutError):
        Client(url_file=plain_file, timeout=2)
    # A --reuse restart keeps the key pair, so the running engine comes back.
    cluster.controller.stop()
    cluster.start_controller("--curve", "--reuse")
    again = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    assert again["curve_serverkey"] == info["curve_serverkey"]
    with connect(cluster.profile_dir, 1) as client:
        assert client[0].apply_sync(lambda: "again") == "again"


def test_a_large_result_reaches_every_client_waiting_for_it(cluster, make_gate):
    """The submitter reads the shared-memory result; another client waiting on
    the same task (get_result while it runs) gets the bytes too."""
    import numpy as np

    cluster.start_controller("--nodb")  # the controller keeps no copy for the DB, yet must for the waiter
    cluster.start_engines(1)
    with connect(cluster.profile_dir, 1) as submitter, Client(profile_dir=cluster.profile_dir, timeout=10) as other:
        gate = make_gate()
        ar = submitter[0].apply_async(lambda gate: (wait_for_gate(gate), np.ones(1024 * 1024))[1], gate.path)  # 8 MB
        wait_for(lambda: submitter.queue_status()[0]["queue"] == 1, 10, "the task to reach the engine")
        waiting = other.get_result(ar.msg_ids[0])
        other.queue_status()  # answered after the controller took the get_result request (same socket, in order)
        assert not ar.ready() and not waiting.ready()
        gate.open()
        assert np.array_equal(ar.get(timeout=20), np.ones(1024 * 1024))
        assert np.array_equal(waiting.get(timeout=20), np.ones(1024 * 1024))
