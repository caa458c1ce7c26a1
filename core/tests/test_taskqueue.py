"""The controller's task queue as a state machine: no processes, no sockets,
no clock.  Each test feeds events and checks the actions that come out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cluster_launcher.controller.taskqueue import (
    Dispatch,
    Engine,
    Fail,
    ForwardAbort,
    Requeue,
    Task,
    TaskQueue,
)
from cluster_launcher.scheduler import Scheduler


class LeastLoaded(Scheduler):
    """The fewest tasks in flight, least recently used first among equals."""

    name = "test-leastload"

    def choose(self, loads: Sequence[int]) -> int:
        return min(range(len(loads)), key=loads.__getitem__)


def make_queue(engines: int = 0, hwm: int = 0, memory: int = 100, history: dict | None = None) -> TaskQueue:
    def recorded_outcome(msg_id: str) -> tuple[bool, str | None]:
        return (history or {})[msg_id]

    queue: TaskQueue = TaskQueue(LeastLoaded(), hwm=hwm, memory=memory, recorded_outcome=recorded_outcome)
    for i in range(engines):
        queue.add_engine(Engine(id=i, uuid=f"uuid-{i}", hostname="node", pid=100 + i, domain="shm-a"))
    queue.take_actions()
    return queue


def dispatched(actions: list) -> list[tuple[str, int]]:
    return [(a.task.msg_id, a.engine.id) for a in actions if isinstance(a, Dispatch)]


def failures(actions: list) -> list[tuple[str, str]]:
    return [(a.task.msg_id, a.ename) for a in actions if isinstance(a, Fail)]


def finish(queue: TaskQueue, msg_id: str, ok: bool = True) -> list:
    """The engine running ``msg_id`` answers; the hub delivers and completes."""
    task = queue.pending(msg_id)
    assert task is not None and task.engine_id is not None
    assert queue.returned(msg_id, task.engine_id) is task
    queue.complete(task, ok)
    return queue.take_actions()


# --- load balancing and the high-water mark --------------------------------------


def test_tasks_wait_for_an_engine_then_go_in_submission_order():
    queue = make_queue()
    for name in ("a", "b", "c"):
        queue.submit(Task(msg_id=name), now=0)
    assert queue.take_actions() == [] and queue.unassigned() == 3
    queue.add_engine(Engine(id=0, uuid="u0"))
    assert dispatched(queue.take_actions()) == [("a", 0), ("b", 0), ("c", 0)]
    assert queue.unassigned() == 0 and queue.engines[0].lb_load == 3


def test_scheduler_sees_loads_least_recently_used_first():
    queue = make_queue(engines=3)
    for name in "abcd":
        queue.submit(Task(msg_id=name), now=0)
    # Equal loads: least recently used first, so the engines take turns.
    assert dispatched(queue.take_actions()) == [("a", 0), ("b", 1), ("c", 2), ("d", 0)]


def test_hwm_keeps_tasks_in_the_controller_until_an_engine_is_free():
    queue = make_queue(engines=2, hwm=1)
    for name in "abc":
        queue.submit(Task(msg_id=name), now=0)
    assert dispatched(queue.take_actions()) == [("a", 0), ("b", 1)]
    assert queue.unassigned() == 1
    assert dispatched(finish(queue, "b")) == [("c", 1)]
    assert queue.engines[0].lb_load == 1 and queue.engines[1].lb_load == 1


def test_hwm_lets_a_task_for_a_free_engine_pass_one_waiting_for_a_full_one():
    queue = make_queue(engines=2, hwm=1)
    queue.submit(Task(msg_id="busy"), now=0)
    queue.submit(Task(msg_id="wants-0", targets=[0]), now=0)
    queue.submit(Task(msg_id="any"), now=0)
    assert dispatched(queue.take_actions()) == [("busy", 0), ("any", 1)]
    assert dispatched(finish(queue, "busy")) == [("wants-0", 0)]


def test_direct_tasks_do_not_count_against_the_hwm():
    queue = make_queue(engines=1, hwm=1)
    queue.submit(Task(msg_id="m1", queue="mux", targets=[0]), now=0)
    queue.submit(Task(msg_id="m2", queue="mux", targets=[0]), now=0)
    queue.submit(Task(msg_id="lb"), now=0)
    assert dispatched(queue.take_actions()) == [("m1", 0), ("m2", 0), ("lb", 0)]


def test_direct_task_to_an_unknown_engine_fails_at_once():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="m", queue="mux", targets=[7]), now=0)
    actions = queue.take_actions()
    assert failures(actions) == [("m", "EngineError")] and "no engine with id [7]" in actions[0].evalue
    assert not queue.pending("m") and queue.knows("m")


def test_targets_none_registered_fails_at_submission():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="t", targets=[5, 6]), now=0)
    assert failures(queue.take_actions()) == [("t", "EngineError")]


def test_shared_memory_task_goes_only_to_engines_of_its_memory_domain():
    queue = make_queue()
    queue.add_engine(Engine(id=0, uuid="u0", domain="elsewhere"))
    queue.add_engine(Engine(id=1, uuid="u1", domain="here"))
    queue.submit(Task(msg_id="big", shm_domain="here"), now=0)
    queue.submit(Task(msg_id="nowhere", shm_domain=""), now=0)
    actions = queue.take_actions()
    assert dispatched(actions) == [("big", 1)]
    assert failures(actions) == [("nowhere", "DependencyError")]


# --- retries and engine death -----------------------------------------------------------


def test_failed_task_is_retried_on_another_engine_with_its_files_dropped():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="t", retries=1, shm_domain="shm-a"), now=0)
    assert dispatched(queue.take_actions()) == [("t", 0)]
    task = queue.returned("t", 0)
    assert task is not None and queue.retry(task, failed_on=0)
    actions = queue.take_actions()
    assert [type(a) for a in actions] == [Requeue, Dispatch]  # re-packed before it goes out again
    assert dispatched(actions) == [("t", 1)]
    assert task.retries == 0 and task.blacklist == {0} and task.shm_domain is None
    assert queue.returned("t", 1) is task and not queue.retry(task, failed_on=1)  # no retries left


def test_no_retry_when_no_other_allowed_engine_is_registered():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="t", retries=3, targets=[0]), now=0)
    queue.take_actions()
    task = queue.returned("t", 0)
    assert task is not None and not queue.retry(task, failed_on=0)
    assert task.retries == 3 and queue.take_actions() == []


def test_direct_tasks_are_never_retried():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="m", queue="mux", targets=[0], retries=2), now=0)
    queue.take_actions()
    task = queue.returned("m", 0)
    assert task is not None and not queue.retry(task, failed_on=0)


def test_reply_from_an_engine_that_does_not_run_the_task_is_not_its_result():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="t"), now=0)
    queue.take_actions()
    assert queue.returned("t", 1) is None and queue.returned("t", None) is None
    assert queue.returned("unknown", 0) is None
    assert queue.engines[0].lb_load == 1 and queue.pending("t") is not None


def test_engine_death_retries_tasks_with_retries_and_fails_the_others():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="keep", retries=1), now=0)
    queue.submit(Task(msg_id="other-engine"), now=0)
    queue.submit(Task(msg_id="lose"), now=0)
    assert dispatched(queue.take_actions()) == [("keep", 0), ("other-engine", 1), ("lose", 0)]
    gone = queue.remove_engine(0, "heartbeat")
    actions = queue.take_actions()
    assert gone is not None and gone.id == 0 and 0 not in queue.engines
    assert failures(actions) == [("lose", "EngineError")]
    assert "engine 0 (node, pid 100) died or left (heartbeat)" in next(a for a in actions if isinstance(a, Fail)).evalue
    assert dispatched(actions) == [("keep", 1)]
    assert queue.remove_engine(0, "again") is None


def test_waiting_task_whose_only_target_died_fails():
    queue = make_queue(engines=2, hwm=1)
    queue.submit(Task(msg_id="busy"), now=0)
    queue.submit(Task(msg_id="busy-too"), now=0)
    queue.submit(Task(msg_id="only-1", targets=[1]), now=0)
    queue.take_actions()
    queue.remove_engine(1, "shutdown")
    actions = queue.take_actions()
    assert ("only-1", "EngineError") in failures(actions)
    assert "registered any more" in next(a.evalue for a in actions if a.task.msg_id == "only-1")
    assert queue.unassigned() == 0


def test_retry_with_every_allowed_engine_blacklisted_fails():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="t", retries=2, targets=[0, 1]), now=0)
    queue.take_actions()
    task = queue.returned("t", 0)
    assert task is not None and queue.retry(task, failed_on=0)
    queue.take_actions()
    queue.remove_engine(1, "heartbeat")  # a retry left, but engine 0 already failed it
    actions = queue.take_actions()
    assert failures(actions) == [("t", "EngineError")]


# --- dependencies -----------------------------------------------------------------------------


def test_after_waits_for_its_dependency_then_runs():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="first"), now=0)
    queue.submit(Task(msg_id="second", after=["first"]), now=0)
    assert dispatched(queue.take_actions()) == [("first", 0)]
    assert queue.unassigned() == 1
    assert dispatched(finish(queue, "first")) == [("second", 0)]


def test_failed_dependency_fails_its_dependents_transitively():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="a"), now=0)
    queue.submit(Task(msg_id="b", after=["a"]), now=0)
    queue.submit(Task(msg_id="c", after=["b"]), now=0)
    queue.take_actions()
    actions = finish(queue, "a", ok=False)
    assert failures(actions) == [("b", "DependencyError"), ("c", "DependencyError")]
    assert queue.unassigned() == 0 and not queue.tasks


def test_dependency_already_finished_or_failed_is_known_at_once():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="ok"), now=0)
    queue.submit(Task(msg_id="bad"), now=0)
    queue.take_actions()
    finish(queue, "ok")
    finish(queue, "bad", ok=False)
    queue.submit(Task(msg_id="after-ok", after=["ok"]), now=0)
    queue.submit(Task(msg_id="after-bad", after=["bad"]), now=0)
    actions = queue.take_actions()
    assert dispatched(actions) == [("after-ok", 0)]
    assert failures(actions) == [("after-bad", "DependencyError")]


def test_dependencies_beyond_memory_are_looked_up_in_the_history():
    queue = make_queue(engines=1, memory=1, history={"old-ok": (True, "uuid-0"), "old-bad": (False, None)})
    queue.submit(Task(msg_id="x", after=["old-ok"]), now=0)
    queue.submit(Task(msg_id="y", follow=["old-ok"]), now=0)  # ran on uuid-0: engine 0
    queue.submit(Task(msg_id="z", after=["old-bad"]), now=0)
    queue.submit(Task(msg_id="w", after=["never-seen"]), now=0)
    actions = queue.take_actions()
    assert dispatched(actions) == [("x", 0), ("y", 0)]
    assert failures(actions) == [("z", "DependencyError"), ("w", "DependencyError")]
    assert list(queue.finished) == ["w"]  # memory=1: only the latest is remembered


def test_follow_runs_on_the_engine_its_dependency_ran_on():
    queue = make_queue(engines=3)
    queue.submit(Task(msg_id="a"), now=0)
    queue.submit(Task(msg_id="b"), now=0)
    queue.take_actions()  # a on 0, b on 1
    queue.submit(Task(msg_id="with-b", follow=["b"]), now=0)
    assert queue.take_actions() == []
    assert dispatched(finish(queue, "b")) == [("with-b", 1)]


def test_follow_whose_engine_left_cannot_run():
    queue = make_queue(engines=2)
    queue.submit(Task(msg_id="a"), now=0)
    queue.take_actions()
    finish(queue, "a")
    queue.remove_engine(0, "shutdown")
    queue.take_actions()
    queue.submit(Task(msg_id="with-a", follow=["a"]), now=0)
    assert failures(queue.take_actions()) == [("with-a", "DependencyError")]


def test_task_on_two_pending_dependencies_counts_once_and_needs_both():
    queue = make_queue(engines=1, hwm=1)
    queue.submit(Task(msg_id="a"), now=0)
    queue.submit(Task(msg_id="b"), now=0)
    queue.submit(Task(msg_id="both", after=["a", "b"]), now=0)
    queue.take_actions()
    assert queue.unassigned() == 2  # b waits for an engine, "both" for two tasks: counted once
    assert dispatched(finish(queue, "a")) == [("b", 0)]
    assert dispatched(finish(queue, "b")) == [("both", 0)]


# --- timeouts and aborts ------------------------------------------------------------------------


def test_timeout_fails_a_task_still_waiting_but_not_one_already_running():
    queue = make_queue(engines=1, hwm=1)
    queue.submit(Task(msg_id="running", timeout=1.0), now=10.0)
    queue.submit(Task(msg_id="waiting", timeout=2.0), now=10.0)
    queue.take_actions()
    assert queue.next_deadline() == 11.0
    queue.expire(11.5)
    assert queue.take_actions() == [] and queue.next_deadline() == 12.0
    queue.expire(12.0)
    actions = queue.take_actions()
    assert failures(actions) == [("waiting", "TaskTimeout")] and "waited 2.0s" in actions[0].evalue
    assert queue.unassigned() == 0 and queue.next_deadline() is None


def test_timeout_of_a_task_blocked_on_a_dependency():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="slow"), now=0)
    queue.submit(Task(msg_id="dependent", after=["slow"], timeout=5), now=0)
    queue.take_actions()
    queue.expire(5)
    assert failures(queue.take_actions()) == [("dependent", "TaskTimeout")]
    assert finish(queue, "slow") == []  # nothing left waiting on it


def test_abort_ends_waiting_tasks_here_and_forwards_running_ones():
    queue = make_queue(engines=1, hwm=1)
    queue.submit(Task(msg_id="running", owner="me"), now=0)
    queue.submit(Task(msg_id="waiting", owner="me"), now=0)
    queue.submit(Task(msg_id="theirs", owner="someone else"), now=0)
    queue.take_actions()
    assert queue.outstanding("me") == ["running", "waiting"]
    assert queue.outstanding("me", targets=[5]) == ["waiting"]  # not on engine 5, and waiting anywhere
    assert queue.abort(queue.outstanding("me") + ["unknown"]) == ["waiting"]
    actions = queue.take_actions()
    assert failures(actions) == [("waiting", "TaskAborted")]
    forwarded = [a for a in actions if isinstance(a, ForwardAbort)]
    assert [(a.engine.id, a.msg_ids) for a in forwarded] == [(0, ["running"])]
    assert queue.pending("running") is not None and queue.pending("theirs") is not None


def test_known_ids_are_pending_or_remembered():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="t"), now=0)
    queue.take_actions()
    assert queue.knows("t") and not queue.knows("u")
    finish(queue, "t")
    assert queue.knows("t") and queue.pending("t") is None


@pytest.mark.parametrize("engines", [1, 4])
def test_many_tasks_all_complete_and_leave_nothing_behind(engines):
    queue = make_queue(engines=engines, hwm=2)
    for i in range(200):
        queue.submit(Task(msg_id=f"t{i}", after=[f"t{i - 1}"] if i % 3 else []), now=0)
    done = 0
    for _ in range(1000):  # bounded: each round finishes whatever runs
        actions = queue.take_actions()
        running = [t for t in queue.tasks.values() if t.engine_id is not None]
        assert not failures(actions)
        if not running:
            break
        for task in running:
            finish(queue, task.msg_id)
            done += 1
    assert done == 200 and not queue.tasks and queue.unassigned() == 0
    assert all(e.lb_load == 0 and not e.in_flight for e in queue.engines.values())


# --- walltime: draining engines, expected runtimes, idle time ----------------------


class Clock:
    """The queue's epoch clock, moved by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def walltime_queue(*deadlines: float | None, hwm: int = 0) -> tuple[TaskQueue, Clock]:
    clock = Clock()
    queue: TaskQueue = TaskQueue(LeastLoaded(), hwm=hwm, clock=clock)
    for i, deadline in enumerate(deadlines):
        queue.add_engine(Engine(id=i, uuid=f"uuid-{i}", deadline=deadline))
    queue.take_actions()
    return queue, clock


def test_a_draining_engine_gets_no_new_task():
    queue, _ = walltime_queue(None, None)
    assert queue.drain(0) is queue.engines[0]
    for name in "abc":
        queue.submit(Task(msg_id=name), now=0)
    assert dispatched(queue.take_actions()) == [("a", 1), ("b", 1), ("c", 1)]


def test_tasks_wait_while_every_engine_drains_and_go_to_the_next_one_that_registers():
    queue, _ = walltime_queue(None)
    queue.drain(0)
    queue.submit(Task(msg_id="a"), now=0)
    assert queue.take_actions() == [] and queue.unassigned() == 1
    queue.add_engine(Engine(id=1, uuid="uuid-1"))
    assert dispatched(queue.take_actions()) == [("a", 1)]


def test_handed_back_tasks_go_to_another_engine_first_not_failed_and_not_counted_as_retries():
    queue, _ = walltime_queue(None, hwm=3)
    for name in "abc":
        queue.submit(Task(msg_id=name, retries=0), now=0)
    assert dispatched(queue.take_actions()) == [("a", 0), ("b", 0), ("c", 0)]
    queue.submit(Task(msg_id="d"), now=0)  # waits: engine 0 is full
    queue.add_engine(Engine(id=1, uuid="uuid-1", domain="shm-a"))
    assert dispatched(queue.take_actions()) == [("d", 1)]
    # Engine 0 runs "a" and hands back "b" and "c", which it has not started.
    queue.drain(0, ["b", "c"])
    actions = queue.take_actions()
    assert dispatched(actions) == [("b", 1), ("c", 1)]  # in their order, before anything newer
    assert failures(actions) == [] and not any(isinstance(a, Requeue) for a in actions)
    assert queue.pending("b").retries == 0 and not queue.pending("b").blacklist
    assert list(queue.engines[0].in_flight) == ["a"] and queue.engines[0].lb_load == 1
    # The running task still ends as usual.
    assert finish(queue, "a") == []
    assert queue.engines[0].in_flight == {}


def test_a_hand_back_of_tasks_the_engine_no_longer_holds_changes_nothing():
    queue, _ = walltime_queue(None, None)
    queue.submit(Task(msg_id="a"), now=0)
    assert dispatched(queue.take_actions()) == [("a", 0)]
    finish(queue, "a")
    queue.drain(0, ["a", "never-seen"])
    assert queue.take_actions() == [] and queue.engines[0].lb_load == 0
    assert queue.drain(7, ["a"]) is None  # not registered


def test_a_direct_task_handed_back_or_sent_to_a_draining_engine_fails_naming_why():
    queue, _ = walltime_queue(None)
    queue.submit(Task(msg_id="m", queue="mux", targets=[0]), now=0)
    assert dispatched(queue.take_actions()) == [("m", 0)]
    queue.drain(0, ["m"])
    ((task, kind, ename, evalue),) = [(a.task.msg_id, a.kind, a.ename, a.evalue) for a in queue.take_actions()]
    assert (task, kind, ename) == ("m", "engine", "EngineError") and "drained" in evalue
    queue.submit(Task(msg_id="n", queue="mux", targets=[0]), now=0)
    assert failures(queue.take_actions()) == [("n", "EngineError")]


def test_a_task_goes_only_to_an_engine_whose_deadline_leaves_it_its_expected_runtime():
    # Engine 0 ends in 100 s, engine 1 in 1000 s, engine 2 has no known end.
    queue, clock = walltime_queue(1100.0, 2000.0, None)
    queue.submit(Task(msg_id="short", expected_runtime=50), now=0)
    queue.submit(Task(msg_id="long", expected_runtime=500), now=0)
    queue.submit(Task(msg_id="longer", expected_runtime=5000), now=0)
    queue.submit(Task(msg_id="unsaid"), now=0)
    assert dispatched(queue.take_actions()) == [("short", 0), ("long", 1), ("longer", 2), ("unsaid", 0)]
    clock.now = 1960.0  # 40 s left on engine 1: 50 s no longer fit there
    queue.submit(Task(msg_id="late", expected_runtime=50, targets=[1]), now=0)
    assert queue.take_actions() == [] and queue.unassigned() == 1


def test_a_task_no_engine_has_time_for_waits_for_one_and_its_timeout_fails_it():
    queue, _ = walltime_queue(1100.0)
    queue.submit(Task(msg_id="a", expected_runtime=500, timeout=30), now=0)
    assert queue.take_actions() == [] and queue.unassigned() == 1
    queue.expire(now=31)
    assert failures(queue.take_actions()) == [("a", "TaskTimeout")]
    queue.submit(Task(msg_id="b", expected_runtime=500), now=0)
    queue.add_engine(Engine(id=1, uuid="uuid-1", deadline=5000.0))
    assert dispatched(queue.take_actions()) == [("b", 1)]


def test_idle_since_is_when_the_engine_last_had_nothing_in_flight():
    queue, clock = walltime_queue(None)
    assert queue.engines[0].idle_since == 1000.0  # since it registered
    clock.now = 1010.0
    queue.submit(Task(msg_id="a"), now=0)
    queue.submit(Task(msg_id="b"), now=0)
    queue.take_actions()
    assert queue.engines[0].idle_since is None
    clock.now = 1020.0
    finish(queue, "a")
    assert queue.engines[0].idle_since is None  # "b" is still there
    clock.now = 1030.0
    finish(queue, "b")
    assert queue.engines[0].idle_since == 1030.0
    queue.submit(Task(msg_id="c"), now=0)
    queue.take_actions()
    clock.now = 1040.0
    queue.drain(0, ["c"])  # handed back, and nowhere to go: the engine is idle, the task waits
    assert queue.engines[0].idle_since == 1040.0 and queue.unassigned() == 1


# --- a restarted controller adopts the tasks engines hold ----------------------------


def test_adopted_tasks_are_in_flight_on_their_engine_and_complete_like_dispatched_ones():
    queue = make_queue()
    engine = Engine(id=3, uuid="uuid-3")
    running, waiting = Task(msg_id="running"), Task(msg_id="waiting", queue="mux", targets=[3])
    assert queue.adopt(running, engine) and queue.adopt(waiting, engine)
    queue.add_engine(engine)
    assert queue.take_actions() == []  # already on the engine: nothing is sent
    assert (engine.lb_load, set(engine.in_flight), engine.idle_since) == (1, {"running", "waiting"}, None)
    queue.submit(Task(msg_id="after", after=["running"]), now=0.0)
    assert dispatched(queue.take_actions()) == []  # waits for the adopted task, as for any pending one
    assert dispatched(finish(queue, "running")) == [("after", 3)]
    assert finish(queue, "waiting") == [] and finish(queue, "after") == []
    assert engine.in_flight == {} and engine.lb_load == 0


def test_a_task_already_known_is_never_adopted_twice():
    queue = make_queue(engines=1)
    queue.submit(Task(msg_id="t"), now=0.0)
    queue.take_actions()
    other = Engine(id=5, uuid="uuid-5")
    assert not queue.adopt(Task(msg_id="t"), other)
    finish(queue, "t")
    assert not queue.adopt(Task(msg_id="t"), other)  # finished: remembered, not run again
    assert other.in_flight == {} and other.lb_load == 0


def test_an_adopted_task_fails_with_its_engine_and_is_not_retried_elsewhere():
    queue = make_queue(engines=1)
    engine = Engine(id=7, uuid="uuid-7")
    assert queue.adopt(Task(msg_id="held", retries=0), engine)
    queue.add_engine(engine)
    queue.take_actions()
    queue.remove_engine(7, "heartbeat")
    assert failures(queue.take_actions()) == [("held", "EngineError")]
