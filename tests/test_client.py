"""The client API against a real controller and real engines (subprocesses)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import pytest

from cluster_launcher.client.asyncresult import AsyncMapResult, AsyncResult
from cluster_launcher.client.view import DirectView, LoadBalancedView
from cluster_launcher.error import (
    ClusterLauncherError,
    CompositeError,
    DependencyError,
    RemoteError,
    TaskAborted,
    TaskTimeout,
)
from cluster_launcher.testing.processes import wait_for, wait_for_gate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(local_cluster):
    c = local_cluster.client()
    yield c
    c.close()


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cluster-launcher-client-io"]


def _wait_for_gate(gate: str | None, value=None):
    """Run on an engine: wait at ``gate`` (None: do not wait), then return ``value``."""
    if gate is not None:
        wait_for_gate(gate)
    return value


# --- connecting, engines, views ----------------------------------------------


def test_ids_and_views(client):
    assert client.ids == [0, 1]
    assert set(client.engines[0]) == {"uuid", "hostname", "pid", "domain", "mpi"}
    assert client.engines[0]["mpi"] is None and client.mpi_ranks == {} and client.mpi_engines == {}
    assert isinstance(client[0], DirectView) and client[0].targets == 0
    assert client[:].targets == [0, 1]
    assert client[[1]].targets == [1]
    assert client[-1].targets == 1
    assert isinstance(client.load_balanced_view(), LoadBalancedView)
    with pytest.raises(IndexError, match="no engine 7"):
        client[7]


def test_apply_blocking_and_not(client):
    view = client[0]
    ar = view.apply(pow, 2, 5)
    assert isinstance(ar, AsyncResult)
    assert ar.get(5) == 32
    view.block = True
    assert view.apply(pow, 2, 3) == 8
    assert view.apply_async(pow, 2, 4).get(5) == 16
    assert client[:].apply_sync(pow, 3, 2) == [9, 9]
    assert client.load_balanced_view().apply_sync(pow, 3, 3) == 27


def test_push_pull_execute_getitem(client):
    dview = client[:]
    dview.block = True
    dview.push({"alpha": 1, "beta": [1, 2]})
    assert dview.pull("alpha") == [1, 1]
    assert dview.pull(["alpha", "beta"]) == [[1, [1, 2]], [1, [1, 2]]]
    dview["gamma"] = "g"
    assert dview["gamma"] == ["g", "g"]
    assert client[1]["gamma"] == "g"
    dview.execute("delta = alpha + 41")
    assert dview["delta"] == [42, 42]
    with pytest.raises(CompositeError) as info:
        dview.pull("not_defined_anywhere")
    assert info.value.ename == "NameError"


def test_run_file(client, tmp_path):
    script = tmp_path / "setup_names.py"
    script.write_text("from_file = 'ran'\n")
    client[:].run(str(script), block=True)
    assert client[:]["from_file"] == ["ran", "ran"]


def test_scatter_gather(client):
    dview = client[:]
    dview.scatter("part", list(range(7)), block=True)
    assert client[0]["part"] == [0, 1, 2, 3]
    assert client[1]["part"] == [4, 5, 6]
    assert dview.gather("part", block=True) == list(range(7))
    ar = dview.gather("part")
    assert isinstance(ar, AsyncMapResult) and ar.get(5) == list(range(7))


def test_scatter_gather_numpy(client):
    import numpy  # a dev dependency: always there
    client[:].scatter("arr", numpy.arange(10.0), block=True)
    gathered = client[:].gather("arr", block=True)
    assert isinstance(gathered, numpy.ndarray) and gathered.tolist() == list(numpy.arange(10.0))


def test_direct_map(client):
    dview = client[:]
    assert dview.map_sync(lambda x, y: x * y, range(5), range(5)) == [0, 1, 4, 9, 16]
    ar = dview.map_async(str, range(5))
    assert isinstance(ar, AsyncMapResult) and len(ar) == 5
    assert list(ar) == ["0", "1", "2", "3", "4"]
    assert ar.metadata.engine_id == [0, 1]
    with pytest.raises(ValueError, match="differ in length"):
        dview.map(pow, [1, 2], [1])


def test_main_function_sees_pushed_names(local_cluster, tmp_path):
    """A function defined in the client's real __main__ runs with the engine
    namespace as its globals."""
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(f"""
        import math
        from cluster_launcher import Client

        def helper(x):
            return x + 1

        def uses_pushed():
            return helper(scale) * math.floor(2.5)

        with Client(profile_dir={local_cluster.profile_dir!r}, timeout=10) as c:
            c.wait_for_engines(2, 20)
            view = c[:]
            view.push(dict(scale=10), block=True)
            print("RESULT", view.apply_sync(uses_pushed), c.load_balanced_view().apply_sync(uses_pushed))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    assert "RESULT [22, 22] 22" in out.stdout


# --- errors --------------------------------------------------------------------


def _fails(x):
    raise ValueError(f"bad value {x}")


def test_remote_error(client):
    with pytest.raises(RemoteError) as info:
        client[0].apply_sync(_fails, 3)
    err = info.value
    assert (err.ename, err.evalue) == ("ValueError", "bad value 3")
    assert "ValueError: bad value 3" in err.traceback and "_fails" in err.traceback
    assert err.engine_info["engine_id"] == 0
    ar = client[0].apply(_fails, 4)
    assert ar.wait(5) and ar.ready() and not ar.successful()
    assert ar.metadata.status == "error" and ar.metadata.error["ename"] == "ValueError"


def test_composite_error(client):
    with pytest.raises(CompositeError) as info:
        client[:].apply_sync(_fails, 1)
    err = info.value
    assert isinstance(err, RemoteError)
    assert [e.ename for e in err.elist] == ["ValueError", "ValueError"]
    assert sorted(e.engine_info["engine_id"] for e in err.elist) == [0, 1]
    with pytest.raises(RemoteError):
        err.raise_exception(1)


def test_get_timeout(client, make_gate):
    gate = make_gate()
    ar = client[0].apply(_wait_for_gate, gate.path)
    with pytest.raises(TimeoutError, match="0/1 tasks finished after 0.05 s"):
        ar.get(timeout=0.05)
    # get gave up while the task was still held at the gate: it did not wait for the result.
    assert not ar.ready() and ar.progress == 0
    gate.open()
    assert ar.get(20) is None and ar.progress == 1


# --- metadata, streams, AsyncResult --------------------------------------------


def _talk_then_wait(gate):
    print("hello from the engine", flush=True)
    _wait_for_gate(gate)
    time.sleep(0.5)  # a lower bound for the timings below
    print("bye")
    return "done"


def test_metadata_and_streams(client, make_gate):
    gate = make_gate()
    before = datetime.now(timezone.utc)
    ar = client[1].apply(_talk_then_wait, gate.path)
    wait_for(lambda: "hello" in ar.metadata.stdout, 20, "the task's first line to be streamed")
    assert "hello from the engine" in ar.stdout and not ar.ready()  # streamed while running
    gate.open()
    assert ar.get(20) == "done"
    after = datetime.now(timezone.utc)
    md = ar.metadata
    assert md.engine_id == 1 == ar["engine_id"] and md["status"] == "ok"
    assert before <= md.submitted <= md.started <= md.completed <= md.received <= after
    assert md.stdout == "hello from the engine\nbye\n"
    assert 0.5 < ar.elapsed <= (after - before).total_seconds()
    assert ar.serial_time >= 0.5 and ar.wall_time >= ar.serial_time
    assert ar.msg_ids == [ar.msg_id] and len(ar) == 1


def test_multi_metadata_and_iteration(client):
    ar = client[:].apply(os.getpid)
    pids = ar.get(5)
    assert pids == [client.engines[0]["pid"], client.engines[1]["pid"]]
    assert list(ar) == pids and ar[1] == pids[1]
    assert ar.metadata[0].engine_id == 0 and ar.metadata.engine_id == [0, 1]
    assert ar.get_dict() == {0: pids[0], 1: pids[1]}
    assert len(ar.msg_ids) == 2 and ar.successful()


def test_wait_interactive(client, capsys):
    ar = client.load_balanced_view().map(time.sleep, [0.1] * 4)
    assert ar.wait_interactive(interval=0.05, timeout=10)
    out = capsys.readouterr().out
    assert "4/4 tasks" in out and out.endswith("\n") and "\r" in out


# --- load balancing --------------------------------------------------------------


def test_lb_map_ordered_and_unordered(client, make_gate):
    lview = client.load_balanced_view()
    assert lview.map_sync(lambda x: x * x, range(10), chunksize=3) == [x * x for x in range(10)]
    # Two idle engines: leastload gives each task an engine of its own.  The
    # first is held at a gate, so the second (quick) one finishes first.
    gate = make_gate()
    ar = lview.map(_wait_for_gate, [gate.path, None], ["slow", "quick"], ordered=True)
    wait_for(lambda: ar.progress == 1, 20, "the quick task to finish")
    assert not ar.ready()
    gate.open()
    assert list(ar) == ["slow", "quick"]  # ordered: in submission order, not finishing order
    # unordered: the quick task's result comes first although it was submitted second
    gate = make_gate()
    ar = lview.map(_wait_for_gate, [gate.path, None], ["slow", "quick"], ordered=False)
    assert next(iter(ar)) == "quick"
    gate.open()
    assert sorted(ar) == ["quick", "slow"] and ar.get(20) == ["slow", "quick"]


def test_lb_after_follow(client):
    lview = client.load_balanced_view()
    first = lview.apply(time.sleep, 0.3)
    with lview.temp_flags(after=[first]):
        second = lview.apply(time.time)
    assert lview.after is None
    second.get(5)
    assert second.metadata.started >= first.metadata.completed
    with lview.temp_flags(follow=first):
        third = lview.apply(os.getpid)
    assert third.get(5) and third.metadata.engine_id == first.metadata.engine_id
    with pytest.raises(KeyError, match="unknown flag"):
        lview.set_flags(bogus=1)


def test_lb_targets(client):
    lview = client.load_balanced_view(targets=[1])
    assert {lview.apply(os.getpid).get(5) for _ in range(4)} == {client.engines[1]["pid"]}


def test_lb_dependency_failure_and_timeout(client, make_gate):
    lview = client.load_balanced_view()
    bad = lview.apply(_fails, 0)
    with lview.temp_flags(after=bad):
        dependent = lview.apply(pow, 2, 2)
    with pytest.raises(DependencyError):
        dependent.get(5)
    # The controller checks deadlines once per heartbeat period (1 s by default).
    gate = make_gate()
    blocker = client[0].apply(_wait_for_gate, gate.path)
    with lview.temp_flags(after=[blocker], timeout=0.05):
        late = lview.apply(pow, 2, 2)
    with pytest.raises(TaskTimeout):
        late.get(20)
    assert not blocker.ready()  # timed out waiting for it, not after it
    gate.open()
    blocker.get(20)


def _fail_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "second attempt"


def test_lb_retries(client, tmp_path):
    lview = client.load_balanced_view()
    with pytest.raises(RemoteError, match="first attempt"):
        lview.apply_sync(_fail_once, str(tmp_path / "a"))
    lview.retries = 1
    assert lview.apply_sync(_fail_once, str(tmp_path / "b")) == "second attempt"


def test_abort(client, make_gate):
    gate = make_gate()
    running = client[0].apply(_wait_for_gate, gate.path)
    queued = client[0].apply(pow, 2, 10)  # behind `running`, which waits at the gate
    aborted = client.abort(queued)
    assert queued.msg_id in aborted
    gate.open()  # the engine acts on the abort when it takes its next task
    with pytest.raises(TaskAborted):
        queued.get(20)
    assert running.get(20) is None
    lview = client.load_balanced_view()
    gate = make_gate()
    blockers = client[:].apply(_wait_for_gate, gate.path)
    waiting = lview.apply(pow, 2, 2)  # queued behind a blocker, whichever engine it went to
    waiting.abort()
    gate.open()
    with pytest.raises(TaskAborted):
        waiting.get(20)
    blockers.get(20)


# --- client-level operations --------------------------------------------------------


def test_history_get_result_db_query_resubmit_purge(client, local_cluster, make_gate):
    ar = client[0].apply(pow, 3, 4)
    assert ar.get(5) == 81
    assert client.get_result(ar.msg_id).get(5) == 81  # answered locally
    with local_cluster.client() as other:  # through the controller's database
        remote = other.get_result(ar.msg_id)
        assert remote.get(5) == 81 and remote.metadata.engine_id == 0
        gate = make_gate()
        slow = client[1].apply(_wait_for_gate, gate.path)
        client.queue_status()  # answered after the controller took `slow` (same socket, in order)
        pending = other.get_result([slow.msg_id])  # delivered when it finishes
        other.queue_status()  # answered after the controller took the get_result request
        assert not pending.ready()
        gate.open()
        assert pending.get(20) == [None]
        with pytest.raises(RemoteError, match="KeyError"):
            other.get_result("no-such-task").get(5)
    records = client.db_query({"msg_id": ar.msg_id}, keys=["msg_id", "completed", "engine_uuid"])
    assert len(records) == 1 and records[0]["completed"].year >= 2024
    assert records[0]["engine_uuid"] == client.engines[0]["uuid"]
    again = client.resubmit(ar.msg_id)
    assert again.get(5) == 81 and again.msg_id != ar.msg_id
    client.purge_results([ar])
    assert client.db_query({"msg_id": ar.msg_id}) == []
    client.purge_results("all")
    assert client.db_query({"completed": {"$ne": None}}) == []
    with pytest.raises(ValueError):
        client.purge_results()


def test_queue_status_and_wait(client, make_gate):
    gate = make_gate()
    ars = [client[0].apply(_wait_for_gate, gate.path) for _ in range(3)]  # all held until the gate opens
    status = client.queue_status()
    assert set(status) == {0, 1, "unassigned"} and status[0]["queue"] >= 3
    assert set(client.queue_status(targets=0)) >= {"queue", "completed", "tasks"}
    assert client.outstanding >= {a.msg_id for a in ars}
    assert not client.wait(ars, timeout=0.01)
    gate.open()
    assert client.wait(timeout=20) and not client.outstanding


def test_sync_imports(client, capsys):
    dview = client[:]
    with dview.sync_imports():
        import json  # noqa: F401
        from os import path  # noqa: F401
    assert "importing json on engine(s)" in capsys.readouterr().out
    dview.execute("synced = json.dumps([path.sep])", block=True)  # the names exist on the engines
    assert dview["synced"] == ['["/"]', '["/"]']


def test_close_gc_and_context_manager(local_cluster, make_gate):
    before = len(_io_threads())
    with local_cluster.client() as c:
        assert len(_io_threads()) == before + 1
    assert len(_io_threads()) == before
    with pytest.raises(ClusterLauncherError, match="^the client is closed$") as info:
        c[0].apply(pow, 1, 1)
    assert type(info.value) is ClusterLauncherError
    c = local_cluster.client()
    c[0].apply(time.sleep, 0.2)  # an AsyncResult kept would keep its client alive
    del c
    gc.collect()
    assert len(_io_threads()) == before  # forgotten clients close themselves
    c = local_cluster.client()
    gate = make_gate()
    pending = c[0].apply(_wait_for_gate, gate.path)  # cannot finish before the close
    c.close()
    with pytest.raises(ClusterLauncherError, match="^the client was closed before the result arrived$") as info:
        pending.get(1)
    assert type(info.value) is ClusterLauncherError


def test_shutdown(make_cluster):
    cluster = make_cluster(n=2)
    with cluster.client() as c:
        by_pid = {p.pid: p for p in cluster.engines}
        first, second = by_pid[c.engines[0]["pid"]], by_pid[c.engines[1]["pid"]]
        c.shutdown(targets=[1])
        wait_for(lambda: c.ids == [0], 20, "the unregistration to reach the client")
        assert second.wait(10) == 0 and first.poll() is None
        c.shutdown(hub=True)
    assert cluster.controller.wait(10) == 0
    assert first.wait(10) == 0


def test_registration_is_live(make_cluster):
    cluster = make_cluster(n=1)
    with cluster.client() as c:
        assert c.ids == [0]
        cluster.add_engines(1)
        assert c.wait_for_engines(2, 20) == [0, 1]


def test_large_buffers_round_trip(client):
    """Buffers above Session.bulk_threshold go through shared memory on one host; no file is left."""
    import numpy  # a dev dependency: always there
    shm = "/dev/shm"
    before = set(os.listdir(shm)) if os.path.isdir(shm) else set()
    data = numpy.arange(600_000, dtype="float64")  # 4.8 MB
    client[:].push({"big": data}, block=True)
    back = client[1]["big"]
    assert back.shape == data.shape and (back == data).all()
    back[0] = 7  # results come back writable
    doubled = client[0].apply_sync(numpy.multiply, data, 2)
    assert doubled[-1] == data[-1] * 2
    assert client.load_balanced_view().apply_sync(numpy.sum, data) == data.sum()
    if os.path.isdir(shm):
        assert {f for f in set(os.listdir(shm)) - before if f.startswith("cluster-launcher-")} == set()
