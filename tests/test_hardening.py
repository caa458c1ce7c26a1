"""Regression tests of the security and reliability review (shared-memory
buffers, stale replies, replays, hangs), each against real controller and
engine processes; "another local user" is the ``nobody`` account, reached
through ``subprocess``'s ``user=``.  docs/security.md describes the defences."""

from __future__ import annotations

import glob
import math
import os
import pickle
import signal
import subprocess
import sys

import cloudpickle
import pytest
import zmq

from cluster_launcher import Client
from cluster_launcher.error import BulkError, DependencyError, EngineError, RemoteError, TaskAborted, TaskTimeout
from cluster_launcher.protocol import bulk, connection
from cluster_launcher.protocol.session import Session, new_id
from cluster_launcher.testing.processes import LocalCluster, wait_for, wait_for_gate

# Tasks defined here travel by value: engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST_HEARTBEAT = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_timeout=2")
NOBODY = 65534


@pytest.fixture
def cluster(tmp_path):
    running = LocalCluster(str(tmp_path / "profile"), controller_args=FAST_HEARTBEAT)
    os.makedirs(running.profile_dir)
    yield running
    running.stop()


def shm_files(pid: int | str = "*") -> list[str]:
    """Our shared-memory files (of the process ``pid``); tests run one at a
    time, so the files of any pid are this test's or leftovers it checks for."""
    return glob.glob(f"{bulk.SHM_DIR}/cluster-launcher-{pid}-*")


def as_nobody(command: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(command, input=stdin, user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, check=True, timeout=30)


# --- 1, 2: retried tasks with shared-memory arguments -------------------------

def test_retry_never_opens_a_consumed_shared_memory_file_that_another_user_planted(cluster, tmp_path):
    """The first engine consumes the task's /dev/shm file and fails; another
    user then creates a file of that name holding a pickle that runs code.
    The retry must carry the arguments itself (and, as it used to fail with
    FileNotFoundError even without an attacker, must succeed)."""
    cluster.start_controller()
    cluster.start_engines(2)
    attempts, release, pwned = (str(tmp_path / name) for name in ("attempts", "release", "pwned"))
    planted = None
    with cluster.client() as client:
        view = client.load_balanced_view()
        view.retries = 1

        def task(data: str) -> int:
            first = not os.path.exists(attempts)
            with open(attempts, "a") as f:
                f.write("x")
            if first:
                wait_for_gate(release)
                raise RuntimeError("the first attempt fails")
            return len(data)

        # A long str stays inside the pickle stream, so the stream itself goes through /dev/shm.
        ar = view.apply_async(task, "x" * 600_000)
        refs = client._dispatcher.task(ar.msg_ids[0]).bulk_refs
        assert refs, "the arguments should have gone through shared memory"
        planted, size = refs[0]["path"], refs[0]["size"]
        wait_for(lambda: os.path.exists(attempts) and not os.path.exists(planted), 20,
                 "the first engine to consume the file and start the task")

        class Exploit:
            def __reduce__(self):
                return (os.mkdir, (pwned,))

        payload = pickle.dumps(Exploit())
        try:
            as_nobody(["sh", "-c", 'cat > "$1"', "sh", planted], payload + b"\0" * (size - len(payload)))
            assert os.stat(planted).st_uid == NOBODY
            open(release, "w").close()
            assert ar.get(timeout=30) == 600_000
        finally:
            if os.path.exists(planted):
                os.unlink(planted)
    assert not os.path.exists(pwned), "the planted pickle was unpickled"
    with open(attempts) as f:
        assert f.read() == "xx"


# --- 3: a task cannot kill its engine ----------------------------------------

def test_exception_with_a_broken_str_fails_the_task_and_no_engine(cluster):
    cluster.start_controller()
    cluster.start_engines(2)
    with cluster.client() as client:
        pids = sorted(client[:].apply_sync(os.getpid))
        view = client.load_balanced_view()
        view.retries = 1

        def fail() -> None:
            class Unprintable(Exception):
                def __str__(self) -> str:
                    raise ValueError("cannot print me")

            raise Unprintable()

        with pytest.raises(RemoteError, match="unprintable Unprintable object") as failure:
            view.apply_async(fail).get(timeout=30)
        assert failure.value.ename == "Unprintable"
        assert sorted(client[:].apply_sync(os.getpid)) == pids
        assert all(e.poll() is None for e in cluster.engines)


ENOSPC_SCRIPT = """
import os, sys
import numpy as np
from cluster_launcher.testing.processes import LocalCluster

cluster = LocalCluster(sys.argv[1], n=1)
cluster.start()
try:
    with cluster.client() as client:
        a = np.arange(2 ** 18, dtype="float64")  # 2 MiB; this /dev/shm holds 1 MiB
        client[:].push({"a": a}, block=True)
        doubled = client[0].apply_sync(lambda: a * 2)
        assert (doubled == a * 2).all()
        assert client[0].apply_sync(lambda: float(a.sum())) == float(a.sum())
    left = os.listdir("/dev/shm")
    assert left == [], left
    print("inline fallback ok")
finally:
    cluster.stop()
"""


def test_a_full_dev_shm_sends_buffers_inline_on_every_side(tmp_path):
    """A real ENOSPC: the client, controller and engine run in a mount
    namespace of their own whose /dev/shm is a 1 MiB tmpfs (Docker's
    default is 64 MB)."""
    script = tmp_path / "full_shm.py"
    script.write_text(ENOSPC_SCRIPT)
    profile = tmp_path / "profile"
    profile.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$0" "$@"', sys.executable, str(script), str(profile)],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "inline fallback ok" in done.stdout


# --- 4: never waiting silently; "same memory" by probe, not host name --------

# Each result file the engine writes is gone before anyone reads it.
LOSE_RESULT_FILES = ("--Engine.startup_command=import os, cluster_launcher.protocol.bulk as b; put = b.put; "
                     "b.put = lambda *args: (lambda ref: (os.unlink(ref['path']), ref)[1])(put(*args))")


@pytest.mark.parametrize("db", ["DictDB", "NoDB"])
def test_an_unreadable_shared_memory_result_fails_the_task(cluster, db):
    """With DictDB the controller reads the result first; with NoDB only the
    client does.  Either way the task ends with an error naming the cause."""
    cluster.controller_args = (*FAST_HEARTBEAT, f"--Controller.db_class={db}")
    cluster.engine_args = (LOSE_RESULT_FILES,)
    cluster.start()
    with cluster.client() as client:
        ar = client[0].apply_async(lambda: bytearray(1 << 20))
        expected = EngineError if db == "DictDB" else BulkError
        with pytest.raises(expected, match="could not be read.*is gone"):
            ar.get(timeout=30)
        assert client.outstanding == set()
        assert client[0].apply_sync(lambda: 1) == 1
    wait_for(lambda: not shm_files(os.getpid()), 20, "the unreadable files to be removed")


def test_an_engine_with_a_dev_shm_of_its_own_gets_buffers_inline(cluster, tmp_path):
    """Same host name, different /dev/shm (a container, a mount namespace):
    host names would say "share memory", and the engine could not open a file."""
    cluster.start_controller()
    engine = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs tmpfs /dev/shm && exec "$0" "$@"', sys.executable, "-m", "cluster_launcher", "engine",
         f"--profile-dir={cluster.profile_dir}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with Client(profile_dir=cluster.profile_dir, timeout=10) as client:
            client.wait_for_engines(1, timeout=30)
            data = bytearray(os.urandom(1 << 20))
            assert client[0].apply_sync(lambda d: bytes(d[::-1]), data) == bytes(data[::-1])
            assert client.engines[0]["domain"] != client.session.domain
            client.shutdown(targets=[0], block=True)
        assert engine.wait(timeout=20) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
        engine.stdout.close()


# --- 5: a busy engine is alive; a late reply is not a result --------------------

def test_a_task_holding_the_gil_longer_than_the_heartbeat_timeout_keeps_its_engine(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    with cluster.client() as client:

        def hold_the_gil(seconds: int) -> int:
            import ctypes

            return ctypes.PyDLL(None).sleep(seconds)  # libc sleep() without releasing the GIL

        assert client[0].apply_sync(hold_the_gil, 4) == 0  # twice the heartbeat timeout
        assert client.ids == [0]
    assert "declaring it dead" not in cluster.controller.output()


def test_a_late_reply_from_an_engine_declared_dead_is_dropped(cluster, tmp_path):
    cluster.controller_args = (*FAST_HEARTBEAT, "--TaskScheduler.hwm=1")
    cluster.start_controller()
    cluster.start_engines(2)
    folder = str(tmp_path)
    with cluster.client() as client:
        pids = {info["pid"]: eid for eid, info in client.engines.items()}
        view = client.load_balanced_view()
        view.retries = 1

        def task() -> int:
            open(os.path.join(folder, f"started-{os.getpid()}"), "w").close()
            wait_for_gate(os.path.join(folder, f"go-{os.getpid()}"))
            return os.getpid()

        ar = view.apply_async(task)
        first = wait_for(lambda: next((p for p in pids if os.path.exists(f"{folder}/started-{p}")), None), 20,
                         "the task to start")
        (second,) = set(pids) - {first}
        os.kill(first, signal.SIGSTOP)
        try:
            wait_for(lambda: os.path.exists(f"{folder}/started-{second}"), 30, "the retry to start on the other engine")
        finally:
            os.kill(first, signal.SIGCONT)
        open(f"{folder}/go-{first}", "w").close()
        # The engine declared dead answers, then registers anew on the same
        # socket: once it is back, the controller has seen its late reply.
        wait_for(lambda: len(client.ids) == 2 and pids[first] not in client.ids, 30, "the stopped engine to come back")
        assert not ar.ready(), "the late reply of the engine declared dead was taken as the result"
        open(f"{folder}/go-{second}", "w").close()
        assert ar.get(timeout=20) == second
        # The engine that ran the retry is free again (with hwm=1 it would never get another task).
        wait_for(lambda: client.queue_status()[pids[second]]["tasks"] == 0, 20, "the retry's engine to be idle")
        assert client.load_balanced_view(targets=[pids[second]]).apply_async(os.getpid).get(timeout=20) == second


# --- 6: nothing left in /dev/shm ------------------------------------------------

def test_results_for_a_client_that_left_leave_nothing_in_dev_shm(cluster, tmp_path):
    cluster.start_controller()
    cluster.start_engines(1)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    before = set(shm_files())
    with cluster.client() as client:
        def big_result() -> bytearray:
            open(started, "w").close()
            wait_for_gate(release)
            return bytearray(2 << 20)

        client[0].apply_async(big_result)
        wait_for(lambda: os.path.exists(started), 20, "the task to start")
    open(release, "w").close()
    with cluster.client() as other:  # the engine has replied once it answers the next task
        assert other[0].apply_sync(lambda: "next") == "next"
    wait_for(lambda: not set(shm_files()) - before, 20, "the undeliverable result's file to be removed")


def test_failed_and_aborted_tasks_with_shared_memory_arguments_leave_nothing(cluster, tmp_path):
    cluster.start_controller()
    cluster.start_engines(1)
    release = str(tmp_path / "release")
    before = set(shm_files())
    with cluster.client() as client:
        view = client.load_balanced_view()
        blocker = client[0].apply_async(wait_for_gate, release)
        failing = view.apply_async(lambda: 1 / 0)
        view.after = [failing]
        dependent = view.apply_async(len, bytearray(1 << 20))
        view.after = None
        queued = view.apply_async(len, bytearray(1 << 20))
        assert shm_files(os.getpid())
        wait_for(lambda: client.queue_status()["unassigned"] >= 1, 20, "the tasks to queue")
        client.abort(queued)
        open(release, "w").close()
        blocker.get(timeout=20)
        with pytest.raises(DependencyError):
            dependent.get(timeout=20)
        with pytest.raises(TaskAborted):
            queued.get(timeout=20)
        assert not set(shm_files()) - before


CRASHING_CLIENT = """
import os, sys
from cluster_launcher import Client
client = Client(profile_dir=sys.argv[1], timeout=10)
client.wait_for_engines(1, timeout=20)
client[0].apply_async(len, bytearray(1 << 20))
print(os.getpid(), flush=True)
sys.stdin.read()  # until killed
"""


def test_shared_memory_files_of_a_process_that_died_are_swept(cluster, tmp_path):
    # One left from before the controller started: swept at start-up.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = bulk.put(b"x" * 1000, int(dead.stdout))
    cluster.controller_args = (*FAST_HEARTBEAT, "--Controller.shm_sweep_interval=0.5")
    cluster.start_controller()
    assert not os.path.exists(leftover["path"])
    # One whose client is killed while its task waits behind another: swept while running.
    release = str(tmp_path / "release")
    cluster.start_engines(1)
    with cluster.client() as client:
        blocker = client[0].apply_async(wait_for_gate, release)
        crasher = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, cluster.profile_dir],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pid = int(crasher.stdout.readline())
        wait_for(lambda: shm_files(pid), 10, "the crashing client's file")
        crasher.kill()
        crasher.wait()
        crasher.stdin.close()
        crasher.stdout.close()
        wait_for(lambda: not shm_files(pid), 20, "the dead client's file to be swept")
        open(release, "w").close()
        blocker.get(timeout=20)


# --- 7, 8: queued tasks -------------------------------------------------------

def test_a_queued_task_whose_target_engines_all_died_fails(cluster, tmp_path):
    cluster.controller_args = (*FAST_HEARTBEAT, "--TaskScheduler.hwm=1")  # the second task waits in the controller
    cluster.start_controller()
    cluster.start_engines(2)
    with cluster.client() as client:
        pid = client.engines[0]["pid"]
        view = client.load_balanced_view(targets=[0])
        view.apply_async(wait_for_gate, str(tmp_path / "never"))
        queued = view.apply_async(lambda: "ran")
        wait_for(lambda: client.queue_status()["unassigned"] == 1, 20, "the second task to queue")
        next(e for e in cluster.engines if e.pid == pid).stop(signal.SIGKILL)
        with pytest.raises(EngineError, match="targets \\[0\\]"):
            queued.get(timeout=30)


def test_abort_without_arguments_aborts_only_the_callers_tasks(cluster, tmp_path):
    cluster.controller_args = (*FAST_HEARTBEAT, "--TaskScheduler.hwm=1")  # later tasks wait in the controller
    cluster.start_controller()
    cluster.start_engines(1)
    release = str(tmp_path / "release")
    with cluster.client() as mine, cluster.client() as theirs:
        started = str(tmp_path / "started")
        blocker = mine.load_balanced_view().apply_async(wait_for_gate, release, 60, started)
        # Running, not only sent: a task on an engine that has not started it is aborted too.
        wait_for(lambda: os.path.exists(started), 20, "the blocker to start")
        my_task = mine.load_balanced_view().apply_async(lambda: "mine")
        their_task = theirs.load_balanced_view().apply_async(lambda: "theirs")
        wait_for(lambda: mine.queue_status()["unassigned"] == 2, 20, "both tasks to queue")
        aborted = mine.abort()
        assert their_task.msg_ids[0] not in aborted and my_task.msg_ids[0] in aborted
        assert blocker.msg_ids[0] in aborted  # mine too, and running: interrupted (docs/stopping-tasks.md)
        with pytest.raises(TaskAborted, match="interrupted while running"):
            blocker.get(timeout=20)
        assert their_task.get(timeout=20) == "theirs"
        with pytest.raises(TaskAborted):
            my_task.get(timeout=20)


# --- 9, 10, 11: replays, identity, size and flooding --------------------------

def test_a_replayed_apply_runs_once(cluster, tmp_path):
    cluster.start_controller()
    cluster.start_engines(1)
    log = str(tmp_path / "runs")
    with cluster.client() as client:
        sent: list[list] = []
        send = client._conn.send
        client._conn.send = lambda frames, copy=True: (sent.append(list(frames)), send(frames, copy))[1]

        def record() -> None:
            with open(log, "a") as f:
                f.write("ran\n")

        client[0].apply_sync(record)
        client._conn.send = send
        (frames,) = [f for f in sent if b'"type":"apply"' in bytes(f[2])]
        client._conn.send(frames)  # the same signed frames again
        header = client.session.unpack(frames).header  # the same id, newly signed
        client._conn.send(client.session.pack(dict(header, resent=True), sent[-1][3:]))
        assert client[0].apply_sync(lambda: "after") == "after"  # the engine runs tasks in order
    with open(log) as f:
        assert f.read() == "ran\n"
    wait_for(lambda: "replayed message" in cluster.controller.output(), 10, "the replay to be logged")
    assert "already known" in cluster.controller.output()


def test_a_peer_without_the_key_cannot_take_over_an_engines_stream(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "engine"), "engine")
    context = zmq.Context()
    thief = context.socket(zmq.DEALER)
    try:
        with cluster.client() as client:
            thief.setsockopt(zmq.IDENTITY, client.engines[0]["uuid"].encode())  # all a client knows
            thief.connect(connection.url(info, "engine_port"))
            Session(key=b"not-the-key").send(thief, "register", {"uuid": "x"})
            wait_for(lambda: "bad signature" in cluster.controller.output(), 10,
                     "the thief to be connected and refused")
            assert client[0].apply_async(os.getpid).get(timeout=20) == cluster.engines[0].pid
            assert client.load_balanced_view().apply_async(lambda: 7).get(timeout=20) == 7
            assert not thief.poll(0), "the thief received a message"
    finally:
        thief.close(0)
        context.term()


def test_signed_messages_of_types_no_handler_takes_reach_nothing(cluster):
    # Every socket dispatches through an explicit table of handlers: a signed
    # message named after an attribute ("socket", "info", "run") is ignored,
    # not called (it used to come back as a TypeError reply).
    cluster.start_controller()
    cluster.start_engines(1)
    client_info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    engine_info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "engine"), "engine")
    session = Session(key=client_info["key"])
    context = zmq.Context()
    reply = context.socket(zmq.DEALER)
    reply.setsockopt(zmq.IDENTITY, b"r-" + session.session_id.encode())  # where the controller answers
    other = context.socket(zmq.DEALER)
    try:
        reply.connect(connection.url(client_info, "client_port"))
        other.connect(connection.url(engine_info, "engine_port"))
        for name in ("socket", "info", "run", "__init__"):
            session.send(reply, name, {"session": session.session_id})
            session.send(other, name, {"session": session.session_id})
        wait_for(lambda: "ignored an engine message of type '__init__'" in cluster.controller.output(), 10,
                 "the engine-port messages to be ignored")
        wait_for(lambda: "ignored a client message of unknown type '__init__'" in cluster.controller.output(), 10,
                 "the client-port messages to be ignored")
        status = session.send(reply, "queue_status", {"session": session.session_id, "targets": None})
        assert reply.poll(10_000), "no answer to queue_status"
        first = session.recv(reply)  # the first answer on this socket: nothing came before it
        assert first is not None and (first.type, first.header["parent"]) == ("queue_status_reply", status["id"])
        with cluster.client() as client:
            assert client[0].apply_sync(lambda: "still works") == "still works"
        assert "TypeError" not in cluster.controller.output()
    finally:
        reply.close(0)
        other.close(0)
        context.term()


def test_oversized_and_garbage_messages_are_refused_without_flooding_the_log(cluster):
    cluster.controller_args = (*FAST_HEARTBEAT, "--Controller.max_message_size=1000000")
    cluster.start_controller()
    cluster.start_engines(1)
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(connection.url(info, "client_port"))
    try:
        sock.send_multipart([b"<CL1>", b"", b"{}", b"\0" * 5_000_000])  # refused before it is buffered
        garbage = context.socket(zmq.DEALER)
        garbage.connect(connection.url(info, "client_port"))
        for _ in range(200):
            garbage.send_multipart([b"<CL1>", b"bad", b'{"type": "apply"}'])
        garbage.close(linger=5000)
        with cluster.client() as client:
            # Sent after the garbage, on another connection: handled after most of it.
            wait_for(lambda: cluster.controller.output().count("dropped a message") >= 10, 20,
                     "the garbage to be dropped")
            assert client[0].apply_sync(lambda: "alive") == "alive"
            client.session.bulk_threshold = 0  # everything through the controller
            with pytest.raises(ValueError, match="Controller.max_message_size = 1000000"):
                client[0].apply_async(len, bytearray(2_000_000))
            assert client[0].apply_sync(lambda: "still alive") == "still alive"
        assert cluster.controller.output().count("dropped a message") <= 11
    finally:
        sock.close(0)
        context.term()


# --- 12, 13, 14: bad requests leave nothing behind and kill nothing ----------------

def test_an_apply_that_fails_at_the_controller_leaves_no_ghost_task(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    with cluster.client() as client:
        send = client._conn.send

        def lose_the_files(frames, copy=True):
            header = client.session.unpack(list(frames)).header
            for ref in (header.get("bulk") or {}).values():
                os.unlink(ref["path"])
            send(frames, copy)

        client._conn.send = lose_the_files
        ar = client.load_balanced_view().apply_async(len, bytearray(1 << 20))
        client._conn.send = send
        with pytest.raises(RemoteError, match="is gone"):
            ar.get(timeout=20)
        assert client.queue_status()["unassigned"] == 0
        assert client.abort() == []
        assert client.db_query({"msg_id": ar.msg_ids[0]}) == []


def test_a_deeply_nested_signed_header_does_not_stop_the_controller(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    info = connection.read_connection_file(connection.connection_file(cluster.profile_dir, "client"), "client")
    session = Session(key=info["key"])
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(connection.url(info, "client_port"))
    try:
        head = b'{"type": "apply", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        sock.send_multipart([b"<CL1>", session.sign([head]), head])
        with cluster.client() as client:
            wait_for(lambda: "malformed header" in cluster.controller.output(), 10, "the header to be dropped")
            assert client[0].apply_sync(lambda: "alive") == "alive"
        assert cluster.controller.poll() is None
    finally:
        sock.close(0)
        context.term()


def test_a_nan_timeout_is_refused(cluster, tmp_path):
    cluster.start_controller()
    cluster.start_engines(1)
    with cluster.client() as client:
        view = client.load_balanced_view()
        view.timeout = math.nan
        with pytest.raises(ValueError, match="LoadBalancedView.timeout"):
            view.apply_async(lambda: 1)
        # A client that does not check: the controller refuses it too.
        (task,) = client._submit([b"not run"], "task", None, timeout=math.nan)
        wait_for(lambda: task.done, 20, "the controller's answer")
        assert "timeout" in task.error["evalue"] and "finite" in task.error["evalue"]
        # ...and other tasks' timeouts still work.
        release = str(tmp_path / "release")
        blocker = client[0].apply_async(wait_for_gate, release)
        view.timeout, view.after = 0.5, [blocker]
        with pytest.raises(TaskTimeout, match="waited 0.5s"):
            view.apply_async(lambda: 1).get(timeout=20)
        open(release, "w").close()
        blocker.get(timeout=20)


# --- 15: the small ones --------------------------------------------------------

def test_get_result_from_another_client_has_its_submitted_time(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    with cluster.client() as first, cluster.client() as second:
        ar = first[0].apply_async(lambda: 5)
        ar.get(timeout=20)
        fetched = second.get_result(ar.msg_ids[0], block=False)
        assert fetched.get(timeout=20) == 5
        assert fetched.metadata["submitted"] is not None
        assert fetched.wall_time >= 0


def test_the_controller_forgets_clients_that_left(cluster):
    cluster.start_controller()
    cluster.start_engines(1)
    with cluster.client() as watcher:
        for _ in range(10):
            Client(profile_dir=cluster.profile_dir, timeout=10).close()
        count = lambda: watcher._request("queue_status", {}).reply.header["clients"]
        wait_for(lambda: count() == 1, 20, "the controller to forget the closed clients")


def test_private_files_are_never_written_through_a_planted_link(tmp_path):
    target = tmp_path / "victim"
    target.write_text("untouched")
    secret = tmp_path / "security" / "controller-client.json"
    secret.parent.mkdir()
    for name in (f"{secret}.partial-{os.getpid()}", f"{secret}.partial"):
        os.symlink(target, name)
    connection.write_private_json(str(secret), {"key": new_id()})
    assert target.read_text() == "untouched"
    assert oct(os.stat(secret).st_mode & 0o777) == oct(0o600)
    assert not os.path.islink(secret)
