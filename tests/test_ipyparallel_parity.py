"""The ipyparallel names docs/ipyparallel.md marks "same", against a real
controller and two engines: one test per group of names, to keep the run short."""

from __future__ import annotations

import itertools
import os
import sys

import cloudpickle
import pytest

import cluster_launcher
from cluster_launcher import Reference, depend, dependent, interactive, require
from cluster_launcher.client.asyncresult import AsyncMapResult, AsyncResult
from cluster_launcher.error import CompositeError, RemoteError, TaskAborted
from cluster_launcher.testing.processes import wait_for_gate

pytestmark = pytest.mark.timeout(60)

# Functions of this module travel by value (engines cannot import the tests).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client(local_cluster):
    c = local_cluster.client()
    yield c
    c.close()


@interactive
def read_engine_name():
    """Reads ``shared`` from the engine's namespace: it is not a global of this module."""
    return shared  # noqa: F821


@interactive
def scaled(x):
    return x * factor  # noqa: F821


@require("json")
@interactive
def dumps_on_engine(value):
    return json.dumps(value)  # noqa: F821


def pid_is(pid):
    return os.getpid() == pid


def engine_pid():
    return os.getpid()


def printing(text):
    print(text)
    print("warn " + text, file=sys.stderr)
    return text


def test_public_names_are_exported():
    assert cluster_launcher.Reference is Reference
    for name in ("Reference", "require", "depend", "dependent", "interactive"):
        assert name in cluster_launcher.__all__ and callable(getattr(cluster_launcher, name))
    with pytest.raises(ValueError, match="a name or dotted name"):
        Reference("a + 1")


def test_clear_reference_interactive_wait_spin(client):
    dview, lview = client[:], client.load_balanced_view()
    dview.push({"shared": [1, 2, 3]}, block=True)
    # Reference: resolved on the engine, positional and keyword, direct and load-balanced.
    assert dview.apply_sync(len, Reference("shared")) == [3, 3]
    assert lview.apply_sync(sorted, Reference("shared"), reverse=True) == [3, 2, 1]
    # interactive: the function's globals are the engine's namespace.
    assert dview.apply_sync(read_engine_name) == [[1, 2, 3], [1, 2, 3]]
    # wait / spin
    ar = dview.apply_async(pow, 2, 3)
    assert dview.wait(ar, timeout=10) is True and ar.get() == [8, 8]
    assert client.wait([ar], timeout=10) is True
    assert client.spin() is None and dview.spin() is None
    # clear: every name is gone (view and client forms, blocking and not).
    dview.clear(block=True)
    with pytest.raises(CompositeError) as failure:
        dview.pull("shared", block=True)
    assert {e.ename for e in failure.value.elist} == {"NameError"}
    client[0].push({"again": 1}, block=True)
    cleared = client.clear(targets=[0])
    assert isinstance(cleared, AsyncResult) and cleared.get(10) == [None]
    with pytest.raises(RemoteError, match="NameError"):
        client[0].pull("again", block=True)


def test_dotted_reference(client):
    client[0].push({"box": {"k": 1}}, block=True)
    assert client[0].apply_sync(len, Reference("box")) == 1
    assert client[0].apply_sync(callable, Reference("box.keys")) is True


def test_remote_and_parallel_decorators(client):
    dview, lview = client[:], client.load_balanced_view()

    @dview.remote(block=True)
    def pid():
        return os.getpid()

    assert pid() == [client.engines[0]["pid"], client.engines[1]["pid"]]

    @lview.remote(block=False)
    def add(a, b):
        return a + b

    ar = add(2, b=3)
    assert isinstance(ar, AsyncResult) and ar.get(10) == 5

    @dview.parallel(block=True)
    def chunk_sums(xs):
        return [sum(xs)]

    assert chunk_sums(range(10)) == [sum(range(5)), sum(range(5, 10))]  # one call per engine, on a part

    @lview.parallel(block=True)
    def chunk_lengths(xs):
        return [len(xs)]

    assert chunk_lengths(list(range(7))) == [4, 3]

    @dview.parallel(block=False)
    def double(x):
        return 2 * x

    mapped = double.map(range(5))  # .map: on each item
    assert isinstance(mapped, AsyncMapResult) and mapped.get(10) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="dist='r' is not supported"):
        dview.parallel(dist="r")


def test_imap_is_lazy_and_ordered_or_not(client):
    lview = client.load_balanced_view()
    assert list(lview.imap(pow, range(6), itertools.repeat(2))) == [i * i for i in range(6)]
    assert sorted(lview.imap(pow, range(6), [2] * 6, ordered=False)) == [i * i for i in range(6)]
    consumed = []

    def endless():
        for i in itertools.count():  # an endless input: only imap's laziness makes this finish
            consumed.append(i)
            yield i

    results = lview.imap(abs, endless(), max_outstanding=2)
    assert next(results) == 0
    assert consumed == [0, 1]  # no more than max_outstanding items read ahead
    assert list(itertools.islice(results, 4)) == [1, 2, 3, 4]
    assert len(consumed) <= 7
    results.close()
    with pytest.raises(ValueError, match="max_outstanding"):
        lview.imap(abs, [1], max_outstanding=0)
    assert list(client[:].imap(abs, [-1, -2, -3])) == [1, 2, 3]


def test_history_status_and_outputs(client, make_gate, capsys):
    lview = client.load_balanced_view()
    assert client.task_history is True
    ar = lview.apply_async(printing, "hello")
    assert ar.get(10) == "hello"
    assert ar.msg_id in client.hub_history()
    assert client.result_status([ar]) == {"pending": [], "completed": [ar.msg_id]}
    assert client.result_status(ar.msg_id, status_only=False)[ar.msg_id] == "hello"
    # stdout/stderr/elapsed/wall_time/serial_time, display_outputs
    assert ar.stdout == "hello\n" and ar.stderr == "warn hello\n"
    assert ar.elapsed >= ar.wall_time >= ar.serial_time >= 0
    ar.display_outputs()
    out, err = capsys.readouterr()
    assert f"[stdout:{ar.engine_id}] hello\n" in out and f"[stderr:{ar.engine_id}] warn hello\n" in err
    # Pending, seen by this client and by another one (through the controller's database).
    gate = make_gate()
    held = client[0].apply_async(wait_for_gate, gate.path)
    assert client.result_status([held]) == {"pending": [held.msg_id], "completed": []}
    other = cluster_client(client)
    try:
        wait_status = other.result_status([held.msg_id, ar.msg_id])
        assert wait_status == {"pending": [held.msg_id], "completed": [ar.msg_id]}
        gate.open()
        held.get(20)
        assert other.result_status([held.msg_id], status_only=False) == {
            "pending": [], "completed": [held.msg_id], held.msg_id: None}
        with pytest.raises(KeyError, match="no task nonexistent"):
            other.result_status(["nonexistent"])
    finally:
        other.close()


def cluster_client(client):
    return type(client)(url_file=client.url_file, timeout=10)


def test_require_depend_dependent(client):
    dview = client[:]
    assert dview.apply_sync(dumps_on_engine, [1]) == ["[1]", "[1]"]
    double_factor = require(factor=2)(scaled)
    assert client.load_balanced_view().apply_sync(double_factor, 21) == 42
    pid0 = client.engines[0]["pid"]
    only_on_zero = dependent(engine_pid, pid_is, pid0)
    assert client[0].apply_sync(only_on_zero) == pid0
    with pytest.raises(RemoteError, match="UnmetDependency") as unmet:
        client[1].apply_sync(only_on_zero)
    assert "pid_is() is false on this engine" in str(unmet.value)
    assert client[0].apply_sync(depend(pid_is, pid0)(engine_pid)) == pid0


def test_activate_binds_the_px_magics(client, tmp_path, monkeypatch):
    from IPython.core import interactiveshell  # a dev dependency: installed wherever the tests run
    from traitlets.config import Config as IPythonConfig

    # The shell's profile in a tmp dir and its history in memory: nothing written to ~/.ipython.
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = IPythonConfig()
    config.HistoryManager.hist_file = ":memory:"
    saved_hooks = sys.displayhook, sys.excepthook
    shell = interactiveshell.InteractiveShell.instance(config=config)
    try:
        dview = client[:]
        dview.activate("_parity")
        assert "px_parity" in shell.magics_manager.magics["line"]
        shell.run_line_magic("px_parity", "activated = 7")
        assert dview.pull("activated", block=True) == [7, 7]
        assert client.activate(targets=[0], suffix="_zero").targets == [0]
        assert "px_zero" in shell.magics_manager.magics["line"]
    finally:
        interactiveshell.InteractiveShell.clear_instance()
        sys.displayhook, sys.excepthook = saved_hooks


def test_long_standing_client_view_and_result_names(client, local_cluster, make_gate, tmp_path, capsys):
    # Client: constructor, engines, views, waiting
    with cluster_launcher.Client(profile_dir=local_cluster.profile_dir, timeout=10) as rc:
        assert rc.wait_for_engines(2, timeout=10) == rc.ids == [0, 1]
        assert rc[0].targets == 0 and rc[:].targets == [0, 1] and rc.direct_view().targets == "all"
    dview, lview = client.direct_view([0, 1]), client.load_balanced_view()
    assert dview.client is client and lview.targets is None
    # DirectView: apply, map, namespace, files, imports, flags
    dview.set_flags(block=True)
    assert dview.block is True and dview.apply(pow, 2, 2) == [4, 4]
    with dview.temp_flags(block=False):
        assert isinstance(dview.apply(pow, 2, 2), AsyncResult)
    assert dview.apply_async(abs, -1).get(10) == [1, 1] and dview.apply_sync(abs, -2) == [2, 2]
    assert dview.map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert dview.map_async(abs, [-4]).get(10) == [4] and dview.map_sync(abs, [-5]) == [5]
    dview.execute("executed = 1")
    script = tmp_path / "script.py"
    script.write_text("ran = executed + 1\n")
    dview.run(str(script))
    dview.push({"pushed": 3})
    dview.update({"updated": 4})
    dview["item"] = 5
    assert dview.pull(["ran", "pushed", "updated"]) == [[2, 3, 4], [2, 3, 4]]
    assert dview["item"] == [5, 5] and dview.get("item") == [5, 5]
    dview.scatter("part", list(range(4)))
    assert dview.gather("part") == [0, 1, 2, 3]
    with dview.sync_imports(quiet=True):
        import textwrap  # noqa: F401
    assert dview.apply(callable, Reference("textwrap.dedent")) == [True, True]
    dview.block = False
    # LoadBalancedView: flags, map options
    lview.set_flags(retries=1, timeout=30, targets=[0, 1])
    assert (lview.retries, lview.timeout, lview.targets) == (1, 30, [0, 1])
    first = lview.apply_async(abs, -7)
    lview.after, lview.follow = [first], first
    follower = lview.apply_async(os.getpid)
    assert follower.get(10) == client.engines[first.engine_id]["pid"]
    lview.set_flags(after=None, follow=None, retries=0, timeout=None, targets=None)
    assert lview.map_sync(abs, range(-6, 0), chunksize=2) == [6, 5, 4, 3, 2, 1]
    unordered = lview.map_async(abs, range(-4, 0), ordered=False)
    assert unordered.ordered is False and sorted(unordered) == [1, 2, 3, 4]
    assert lview.get_result(unordered.msg_ids, block=True) == [[4], [3], [2], [1]]
    assert lview.wait(unordered, timeout=10) and lview.spin() is None and lview.abort([]) == []
    assert "unassigned" in lview.queue_status()
    lview.purge_results(unordered)
    assert client.wait_interactive(unordered, interval=0.01, timeout=10) is True
    # AsyncResult
    ar = dview.apply_async(pow, 3, 2)
    assert ar.wait(10) and ar.ready() and ar.done() and ar.successful() and ar.sent
    assert ar.get() == ar.result() == ar.r == [9, 9] and ar.exception() is None
    assert ar.get_dict() == {0: 9, 1: 9} and list(ar) == [9, 9] and ar[1] == 9 and len(ar) == 2
    assert ar.progress == 2 and len(ar.msg_ids) == 2 and ar.msg_id == ar.msg_ids[0]
    assert ar.engine_id == [0, 1] and ar.metadata.engine_id == [0, 1] and ar["engine_id"] == [0, 1]
    assert ar.wait_interactive(interval=0.01, timeout=10) is True
    failed = client[0].apply_async(int, "x")
    assert isinstance(failed.exception(10), RemoteError) and not failed.successful()
    # Client: history, results, database, queue, abort, purge
    assert client.history[-1] == failed.msg_id and client.wait(timeout=10) and not client.outstanding
    assert client.get_result(ar.msg_ids).get(10) == [9, 9]
    assert dview.get_result(ar.msg_ids, block=True) == [9, 9]
    assert client.resubmit(ar).get(10) == [9, 9]
    assert client.db_query({"msg_id": ar.msg_id}, keys=["msg_id"])[0]["msg_id"] == ar.msg_id
    assert set(client.queue_status()) == {0, 1, "unassigned"} and "queue" in dview.queue_status()[0]
    gate = make_gate()
    held = client[0].apply_async(wait_for_gate, gate.path)
    queued = client[0].apply_async(abs, -1)
    assert queued.msg_id in client.outstanding
    client.abort(queued)
    assert dview.abort([]) == []
    gate.open()
    assert held.get(20) is None
    with pytest.raises(TaskAborted):
        queued.get(10)
    queued2 = client[0].apply_async(abs, -1)
    queued2.get(10)
    client.purge_results(ar)
    client.purge_hub_results([first])
    dview.purge_results("all")
    assert client.db_query({"msg_id": ar.msg_id}) == []
    client.purge_local_results("all")
    assert client.history == []
    client.purge_everything()
    assert client.hub_history() == []
    capsys.readouterr()


def test_view_shutdown_stops_engines_and_controller(make_cluster):
    cluster = make_cluster(n=1)
    rc = cluster.client()
    try:
        rc[:].shutdown(hub=True)
        for process in cluster.processes():
            assert process.wait(15) is not None, f"{process.role} still running after shutdown"
    finally:
        rc.close()
