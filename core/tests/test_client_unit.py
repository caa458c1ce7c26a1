"""The client's own logic, without a controller: reply dispatch into
AsyncResults (messages built and signed with a real Session), metadata,
errors, map iteration, progress bar, partitioning, connection-file errors."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import zmq

from cluster_launcher import Client
from cluster_launcher.client.asyncresult import (
    AsyncMapResult,
    AsyncResult,
    join_parts,
    progress_bar,
)
from cluster_launcher.client.io import Dispatcher
from cluster_launcher.client.view import msg_ids_of, partition
from cluster_launcher.error import (
    ClusterLauncherError,
    CompositeError,
    ConfigError,
    ConnectionFileError,
    DependencyError,
    EngineError,
    RemoteError,
    TaskAborted,
    TaskTimeout,
)
from cluster_launcher.protocol.connection import new_key, write_connection_file
from cluster_launcher.protocol.serialize import serialize
from cluster_launcher.protocol.session import Session, new_id, utcnow

pytestmark = pytest.mark.timeout(30)

SESSION = Session(key=new_key())


def deliver(dispatcher: Dispatcher, msg_type: str, fields: dict, buffers: list = ()) -> None:
    """Sign, frame and verify a message, then hand it to the dispatcher as the IO thread would."""
    frames = SESSION.pack({"type": msg_type, "id": new_id(), **fields}, list(buffers))
    dispatcher.handle(SESSION.unpack(frames))
    dispatcher.waiter.notify()


def reply(dispatcher: Dispatcher, msg_id: str, result=None, error=None, engine_id=0, stdout="") -> None:
    status = "ok" if error is None else ("aborted" if error.get("kind") == "aborted" else "error")
    deliver(dispatcher, "apply_reply", {
        "parent": msg_id, "status": status, "engine_id": engine_id, "engine_uuid": f"uuid-{engine_id}",
        "submitted": utcnow(), "started": utcnow(), "completed": utcnow(), "stdout": stdout, "stderr": "",
        "error": error}, serialize(result) if error is None else [])


def submit(dispatcher: Dispatcher, n: int = 1):
    from datetime import datetime, timezone
    return [dispatcher.new_task(new_id(), datetime.now(timezone.utc)) for _ in range(n)]


@pytest.fixture
def dispatcher():
    return Dispatcher()


def test_single_result_and_metadata(dispatcher):
    (task,) = submit(dispatcher)
    ar = AsyncResult(None, [task], fname="f", single=True, waiter=dispatcher.waiter)
    assert not ar.ready() and ar.progress == 0
    deliver(dispatcher, "stream", {"parent": task.msg_id, "name": "stdout", "text": "partial"})
    assert ar.stdout == "partial" and not ar.ready()
    reply(dispatcher, task.msg_id, {"x": 1}, engine_id=3, stdout="partial and full\n")
    assert ar.ready() and ar.successful() and ar.get(0) == {"x": 1}
    md = ar.metadata
    assert md.engine_id == 3 == md["engine_id"] and md.engine_uuid == "uuid-3"
    assert md.stdout == "partial and full\n" and md.status == "ok" and md.error is None
    assert md.submitted <= md.received and md.started.tzinfo is not None
    assert task.msg_id not in dispatcher.pending and dispatcher.task(task.msg_id) is task


def test_get_timeout_raises_builtin_timeout(dispatcher):
    ar = AsyncResult(None, submit(dispatcher), single=True, waiter=dispatcher.waiter)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0/1 tasks finished after 0.1 s"):
        ar.get(timeout=0.1)
    assert time.monotonic() - started > 0.09  # it waited the timeout (no reply can come here)
    assert ar.wait(0) is False


@pytest.mark.parametrize("kind, cls", [("remote", RemoteError), ("engine", EngineError), ("aborted", TaskAborted),
                                       ("timeout", TaskTimeout), ("dependency", DependencyError)])
def test_error_kinds(dispatcher, kind, cls):
    (task,) = submit(dispatcher)
    ar = AsyncResult(None, [task], single=True, waiter=dispatcher.waiter)
    reply(dispatcher, task.msg_id, error={"ename": "ValueError", "evalue": "boom", "traceback": "TB",
                                          "engine_id": 2, "kind": kind})
    with pytest.raises(cls) as info:
        ar.get(1)
    assert type(info.value) is cls
    assert (info.value.ename, info.value.evalue, info.value.traceback) == ("ValueError", "boom", "TB")
    assert info.value.engine_info["engine_id"] == 2 and not ar.successful()


def test_several_failures_make_a_composite_error(dispatcher):
    tasks = submit(dispatcher, 3)
    ar = AsyncResult(None, tasks, waiter=dispatcher.waiter)
    reply(dispatcher, tasks[0].msg_id, 1)
    for task in tasks[1:]:
        reply(dispatcher, task.msg_id, error={"ename": "KeyError", "evalue": "k", "traceback": "", "kind": "remote"})
    with pytest.raises(CompositeError) as info:
        ar.get(1)
    assert isinstance(info.value, RemoteError) and len(info.value.elist) == 2
    assert "2 of 3 tasks" in str(info.value)


def test_multi_result_list_and_metadata_list(dispatcher):
    tasks = submit(dispatcher, 2)
    ar = AsyncResult(None, tasks, waiter=dispatcher.waiter)
    reply(dispatcher, tasks[1].msg_id, "b", engine_id=1)
    assert ar.progress == 1 and not ar.ready()
    reply(dispatcher, tasks[0].msg_id, "a", engine_id=0)
    assert ar.get() == ["a", "b"] and list(ar) == ["a", "b"] and ar[1] == "b"
    assert ar.metadata.engine_id == [0, 1] and ar.metadata[1].engine_id == 1
    assert ar.get_dict() == {0: "a", 1: "b"} and len(ar) == 2


class _WatchedCondition(threading.Condition):
    """A Condition that tells when a thread starts waiting on it, and counts the
    waits a notify ended.  The Waiter's own 1 s wake-up (for Ctrl-C) is
    stretched to 10 s, so that in the test a wait ends by a notify, or fails
    to be counted (rather than hanging) when none comes."""

    def __init__(self):
        super().__init__()
        self.waiting = threading.Event()
        self.notified = 0

    def wait(self, timeout=None):
        self.waiting.set()
        if super().wait(None if timeout is None else max(timeout, 10)):
            self.notified += 1
            return True
        return False


@pytest.mark.timeout(60)  # four 10 s waits if notify were broken
def test_results_arriving_from_another_thread_wake_waiters(dispatcher):
    tasks = submit(dispatcher, 4)
    condition = dispatcher.waiter.condition = _WatchedCondition()
    ar = AsyncMapResult(None, tasks, ordered=False, item_count=8, waiter=dispatcher.waiter)
    wanted = threading.Semaphore(0)  # released each time the consumer wants the next chunk

    def engine():  # chunks finish in reverse order, each once the consumer waits for it
        for i in reversed(range(4)):
            assert wanted.acquire(timeout=10) and condition.waiting.wait(10)
            condition.waiting.clear()
            reply(dispatcher, tasks[i].msg_id, [2 * i, 2 * i + 1])

    thread = threading.Thread(target=engine)
    thread.start()
    got = []
    try:
        items = iter(ar)
        for _ in range(4):
            wanted.release()
            got += [next(items), next(items)]
    finally:
        thread.join(5)
    assert got == [6, 7, 4, 5, 2, 3, 0, 1]  # as they finished
    assert condition.notified == 4  # each woken by the reply from the other thread
    assert list(items) == [] and ar.get(0) == list(range(8)) and len(ar) == 8
    ordered = AsyncMapResult(None, tasks, ordered=True, waiter=dispatcher.waiter)
    assert list(ordered) == list(range(8))


def test_engines_tracked_from_notifications(dispatcher):
    deliver(dispatcher, "registration", {"engine_id": 1, "uuid": "u1", "hostname": "h", "pid": 5})
    deliver(dispatcher, "registration", {"engine_id": 0, "uuid": "u0", "hostname": "h", "pid": 4})
    assert sorted(dispatcher.engines) == [0, 1] and dispatcher.engines[1]["pid"] == 5
    deliver(dispatcher, "unregistration", {"engine_id": 1, "uuid": "u1", "reason": "heartbeat"})
    assert list(dispatcher.engines) == [0]


def test_unknown_replies_are_dropped(dispatcher):
    reply(dispatcher, "nobody-asked", 1)
    deliver(dispatcher, "stream", {"parent": "nobody", "name": "stdout", "text": "x"})
    deliver(dispatcher, "purge_reply", {"parent": "nobody", "status": "ok"})
    assert not dispatcher.pending and not dispatcher.finished


def test_closing_fails_pending_tasks(dispatcher):
    ar = AsyncResult(None, submit(dispatcher, 2), waiter=dispatcher.waiter)
    dispatcher.fail_pending("the client was closed before the result arrived")
    with pytest.raises(ClusterLauncherError, match="^the client was closed before the result arrived$") as info:
        ar.get(1)
    assert type(info.value) is ClusterLauncherError  # not a RemoteError: nothing ran remotely


def test_wait_interactive_draws_a_progress_bar(dispatcher, capsys):
    tasks = submit(dispatcher, 2)
    ar = AsyncResult(None, tasks, waiter=dispatcher.waiter)
    reply(dispatcher, tasks[0].msg_id, 0)
    assert ar.wait_interactive(interval=0.01, timeout=0.05) is False
    reply(dispatcher, tasks[1].msg_id, 1)
    assert ar.wait_interactive(interval=0.01) is True
    out = capsys.readouterr().out
    assert "1/2 tasks" in out and "2/2 tasks" in out and out.endswith("\n")
    assert progress_bar(1, 4, 2.0, width=8) == "[##------] 1/4 tasks, 2.0 s"


def test_partition_join_and_msg_ids():
    assert partition(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert partition(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert join_parts([[1], (2, 3), []]) == [1, 2, 3] and join_parts(["ab", "c"]) == "abc"
    import numpy  # a dev dependency: always there
    assert join_parts([numpy.arange(2), numpy.arange(1)]).tolist() == [0, 1, 0]
    assert msg_ids_of(None) == [] and msg_ids_of("a") == ["a"] and msg_ids_of(["a", "b"]) == ["a", "b"]
    with pytest.raises(TypeError, match="msg id or an AsyncResult"):
        msg_ids_of([1])


# --- connecting ------------------------------------------------------------------


def test_missing_connection_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", str(tmp_path))
    with pytest.raises(ConnectionFileError,
                       match=r"profile_mine/security/controller-c7-client.json: connection file not found"):
        Client(profile="mine", cluster_id="c7")
    with pytest.raises(ConfigError, match="bad profile name"):
        Client(profile="../x")


def _client_file(tmp_path, **overrides) -> str:
    info = {"key": new_key(), "signature_scheme": "hmac-sha256", "location": "127.0.0.1", "client_port": 1,
            "ssh": "", "cluster_id": "", "transport": "tcp", **overrides}
    path = str(tmp_path / "security" / "controller-client.json")
    write_connection_file(path, info)
    return path


def test_bad_connection_files(tmp_path):
    path = _client_file(tmp_path, signature_scheme="md5")
    with pytest.raises(ConnectionFileError, match="controller-client.json: field 'signature_scheme'"):
        Client(url_file=path)
    with open(path, "w") as f:
        json.dump({"key": "k"}, f)
    with pytest.raises(ConnectionFileError, match="missing field"):
        Client(url_file=path)


def test_silent_controller_times_out_naming_the_url(tmp_path):
    """A port where something listens but never answers: TimeoutError, no thread left behind."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    threads = threading.active_count()
    try:
        started = time.monotonic()
        # The message names the timeout in force: the one given, not the default (10 s).
        with pytest.raises(TimeoutError, match=rf"connect: no reply from the controller at tcp://127.0.0.1:{port} "
                                               r"within 0.5 s$"):
            Client(url_file=_client_file(tmp_path, client_port=port), timeout=0.5)
        assert time.monotonic() - started < 10  # hang protection (and under the default timeout)
    finally:
        router.close(0)
        context.term()
    assert threading.active_count() == threads


def test_nothing_listening_times_out(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match=rf"no controller answered at tcp://127.0.0.1:{port}"):
        Client(url_file=_client_file(tmp_path, client_port=port), timeout=0.3)
    assert os.path.exists(tmp_path / "security" / "controller-client.json")


def test_remote_errors_show_the_engines_tracebacks_in_ipython():
    # IPython calls _render_traceback_() in place of printing the client's own stack.
    first = RemoteError("ZeroDivisionError", "division by zero", "Traceback (most recent call last):\n"
                        "  File \"<task>\", line 1, in f\nZeroDivisionError: division by zero\n", {"engine_id": 0})
    second = RemoteError("KeyError", "'x'", "", {"engine_id": 3})
    assert first._render_traceback_() == ["[engine 0] ZeroDivisionError: division by zero",
                                          "Traceback (most recent call last):", '  File "<task>", line 1, in f',
                                          "ZeroDivisionError: division by zero"]
    composite = CompositeError("2 of 2 tasks failed", [first, second])
    assert composite._render_traceback_() == ["CompositeError: 2 of 2 tasks failed",
                                              *first._render_traceback_(), "[engine 3] KeyError: 'x'"]
