"""Stopping running tasks (docs/stopping-tasks.md): abort() interrupts a task
that already runs, ``time_limit`` interrupts one that runs too long, and a
task that ignores its interrupt for ``Engine.interrupt_grace`` gets its
engine killed.  Real controller and engine processes throughout."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from cluster_launcher.client.asyncresult import AsyncResult
from cluster_launcher.engine.engine import EXIT_TASK_IGNORED_INTERRUPT
from cluster_launcher.error import CompositeError, EngineError, RemoteError, TaskAborted, TaskTimeout
from cluster_launcher.protocol.serialize import pack_apply
from cluster_launcher.testing.processes import LocalCluster, ignore_interrupts, wait_for

pytestmark = pytest.mark.timeout(120)

# Tasks defined here travel by value: engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST_HEARTBEAT = ("--Controller.heartbeat_period=0.2", "--Controller.heartbeat_timeout=5")


@pytest.fixture(scope="module")
def interrupt_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("profile"), n=2, controller_args=FAST_HEARTBEAT)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def client(interrupt_cluster):
    c = interrupt_cluster.client()
    yield c
    c.close()


def _sleep(seconds: float, started: str | None = None) -> str:
    """Run on an engine: mark that it started (``started``: a file), then sleep."""
    if started:
        open(started, "w").close()
    time.sleep(seconds)
    return "slept"


def _count_and_sleep(runs: str, seconds: float) -> None:
    """Run on an engine: add a line to the file ``runs``, then sleep."""
    with open(runs, "a") as f:
        f.write("ran\n")
    time.sleep(seconds)


def _hold_the_gil() -> int:
    """Run on an engine: minutes in one C call that never lets go of the GIL."""
    return sum(range(10**12))


def _engine_pid(client, engine_id: int) -> int:
    return client[engine_id].apply_sync(os.getpid)


def test_abort_interrupts_a_running_task_and_the_engine_answers_the_next(client, tmp_path: Path):
    pid = client.engines[0]["pid"]
    started = str(tmp_path / "started")
    ar = client[0].apply(_sleep, 60, started)
    wait_for(lambda: os.path.exists(started), 20, "the task to start")
    begun = time.monotonic()
    ar.abort()
    with pytest.raises(TaskAborted, match="interrupted while running"):
        ar.get(timeout=15)  # far below the task's 60 s: it was interrupted, not waited for
    print(f"abort() of a running task answered in {time.monotonic() - begun:.3f} s")
    assert ar.metadata["engine_id"] == 0 and ar.metadata["status"] == "aborted"
    assert _engine_pid(client, 0) == pid  # the same engine process, not a restarted one


def test_client_abort_and_view_abort_interrupt_running_tasks(client, tmp_path: Path):
    lview = client.load_balanced_view()
    started = str(tmp_path / "lb-started")
    ar = lview.apply(_sleep, 60, started)
    wait_for(lambda: os.path.exists(started), 20, "the load-balanced task to start")
    assert ar.msg_id in client.abort(ar)
    with pytest.raises(TaskAborted, match="interrupted while running"):
        ar.get(timeout=15)
    engine_id = ar.metadata["engine_id"]
    assert client[engine_id].apply_sync(lambda: "next") == "next"

    # A DirectView's abort() of everything: the running task is interrupted, the one queued behind dropped.
    dview = client[1]
    started = str(tmp_path / "direct-started")
    running = dview.apply(_sleep, 60, started)
    queued = dview.apply(_sleep, 0)
    wait_for(lambda: os.path.exists(started), 20, "the direct task to start")
    dview.abort()
    with pytest.raises(TaskAborted, match="interrupted while running"):
        running.get(timeout=15)
    with pytest.raises(TaskAborted, match="before it ran"):
        queued.get(timeout=15)
    assert dview.apply_sync(lambda: "next") == "next"


def test_time_limit_fails_the_task_with_task_timeout_and_the_engine_goes_on(client, tmp_path: Path):
    lview = client.load_balanced_view()
    pids = set(client[:].apply_sync(os.getpid))
    lview.set_flags(time_limit=1)
    ar = lview.apply(_sleep, 60)
    with pytest.raises(TaskTimeout, match=r"ran longer than its time_limit of 1s: interrupted") as caught:
        ar.get(timeout=20)
    assert isinstance(caught.value, TimeoutError)
    assert lview.apply_sync(_sleep, 0) == "slept"  # well within the limit
    # Not retried (it would run as long on another engine), whatever its retries say.
    runs = tmp_path / "runs"
    with lview.temp_flags(retries=1):
        with pytest.raises(TaskTimeout):
            lview.apply_sync(_count_and_sleep, str(runs), 60)
    assert runs.read_text() == "ran\n"
    lview.set_flags(time_limit=None)

    with lview.temp_flags(time_limit=1):
        limited = lview.apply(_sleep, 60)
    assert lview.time_limit is None
    with pytest.raises(TaskTimeout):
        limited.get(timeout=20)

    # Per call: map, @remote, @parallel; DirectView too (the engine enforces it).
    with pytest.raises(CompositeError) as composite:
        lview.map(_sleep, [60], time_limit=1).get(timeout=20)
    assert [type(e) for e in composite.value.elist] == [TaskTimeout]
    assert lview.time_limit is None and lview.map_sync(_sleep, [0, 0]) == ["slept", "slept"]

    @lview.remote(block=True, time_limit=1)
    def nap(seconds):
        import time
        time.sleep(seconds)
        return seconds

    with pytest.raises(TaskTimeout):
        nap(60)
    assert nap(0) == 0

    dview = client[:]
    dview.set_flags(time_limit=1)
    with pytest.raises(CompositeError) as composite:
        dview.apply_sync(_sleep, 60)
    assert [type(e) for e in composite.value.elist] == [TaskTimeout, TaskTimeout]

    @dview.parallel(block=True, time_limit=30)
    def lengths(items):
        return [len(i) for i in items]

    assert lengths(["a", "bb", "ccc"]) == [1, 2, 3]
    dview.set_flags(time_limit=None)
    assert set(dview.apply_sync(os.getpid)) == pids  # both engines stayed


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "1", True])
def test_bad_time_limit_is_a_one_line_error_naming_it(client, bad):
    for view in (client.load_balanced_view(), client[:]):
        with pytest.raises(ValueError, match=r"time_limit: a finite number of seconds >= 0, or None") as caught:
            view.set_flags(time_limit=bad)
        assert "\n" not in str(caught.value)
        view.time_limit = bad  # set around set_flags: refused when a task is sent
        with pytest.raises(ValueError, match=r"\.time_limit: "):
            view.apply(os.getpid)
    # A client that sends one anyway is refused by the controller.
    tasks = client._submit(pack_apply(os.getpid, (), {}), "task", None, time_limit=-1)
    with pytest.raises(RemoteError, match="'time_limit' must be a finite number of seconds >= 0"):
        AsyncResult(client, tasks).get(timeout=20)


def test_interrupts_racing_with_the_tasks_end_leave_the_engine_working(client):
    """Aborts and time limits that land as the task finishes (or just after):
    whatever each task ends as, the engine keeps answering."""
    pid = client.engines[0]["pid"]
    view = client[0]
    outcomes = set()
    for i in range(40):
        seconds = 0.002 * (i % 10)
        with view.temp_flags(time_limit=0.01 if i % 3 == 0 else None):
            ar = view.apply(_sleep, seconds)
        if i % 3 != 0:
            client.abort(ar)
        try:
            outcomes.add(ar.get(timeout=20))
        except (TaskAborted, TaskTimeout) as exc:
            outcomes.add(type(exc).__name__)
    assert outcomes <= {"slept", "TaskAborted", "TaskTimeout"}
    assert view.apply_sync(lambda: "still here") == "still here"
    assert _engine_pid(client, 0) == pid


def test_a_task_that_ignores_its_interrupt_gets_its_engine_killed(tmp_path: Path):
    cluster = LocalCluster(str(tmp_path / "profile"), n=3, controller_args=FAST_HEARTBEAT,
                           engine_args=("--Engine.interrupt_grace=1",))
    os.makedirs(cluster.profile_dir)
    try:
        cluster.start()
        with cluster.client() as client:
            processes = {p.pid: p for p in cluster.engines}
            pids = {engine_id: client.engines[engine_id]["pid"] for engine_id in client.ids}

            # Aborted, it catches the KeyboardInterrupt and goes on: TaskAborted naming the grace and the engine.
            started = str(tmp_path / "aborted-started")
            aborted = client[0].apply(ignore_interrupts, 60, started)
            wait_for(lambda: os.path.exists(started), 20, "the stubborn task to start")
            aborted.abort()
            assert client[2].apply_sync(lambda: "served") == "served"  # the others serve meanwhile
            with pytest.raises(TaskAborted, match=r"was aborted and ignored its interrupt for 1s "
                               r"\(Engine.interrupt_grace\): engine 0 \(.*\) was killed"):
                aborted.get(timeout=20)
            assert processes[pids[0]].wait(20) == EXIT_TASK_IGNORED_INTERRUPT

            # Past its time_limit, the same: TaskTimeout.
            dview = client[1]
            dview.set_flags(time_limit=1)
            timed = dview.apply(ignore_interrupts, 60, str(tmp_path / "timed-started"))
            with pytest.raises(TaskTimeout, match=r"ran longer than its time_limit of 1s and ignored its interrupt "
                               r"for 1s \(Engine.interrupt_grace\): engine 1 \(.*\) was killed"):
                timed.get(timeout=20)
            assert processes[pids[1]].wait(20) == EXIT_TASK_IGNORED_INTERRUPT

            wait_for(lambda: client.ids == [2], 20, "the killed engines to be unregistered")
            assert client.load_balanced_view().apply_sync(lambda: "still served") == "still served"
            log = cluster.controller.output() if cluster.controller else ""
            assert log.count("unregistered (killed: its task ignored an interrupt)") == 2, log

            # A task that holds the GIL past its time_limit: neither the KeyboardInterrupt nor the watchdog
            # thread can run; faulthandler's C thread ends the engine BACKSTOP_DELAY after limit + grace.
            dview = client[2]
            dview.set_flags(time_limit=1)
            held = dview.apply(_hold_the_gil)
            with pytest.raises(EngineError, match="engine 2 .* died or left \\(heartbeat\\)"):
                held.get(timeout=60)
            engine = processes[pids[2]]
            assert engine.wait(20) == 1
            assert "Timeout (0:00:12)!" in engine.output() and "_hold_the_gil" in engine.output()
    finally:
        cluster.stop()
