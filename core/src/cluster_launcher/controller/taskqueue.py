"""The controller's task queue, as a state machine with no sockets, no
database and no clock of its own: the times it compares come with the
events, or (for engines' walltimes, epoch seconds) from the ``clock`` it is
given.

The hub (:mod:`.hub`) feeds it events — a task submitted, an engine
registered or gone, a task back from its engine, an abort, time passing —
and carries out the actions it emits, in order, from :meth:`TaskQueue.take_actions`:

:class:`Dispatch`
    send the task to the engine (the engine's load is already counted);
:class:`Requeue`
    the task will run again on another engine: the files its frames named in
    shared memory were consumed by the engine that had it, so the hub
    re-packs it inline before it is dispatched again;
:class:`Fail`
    the task is over with this error: reply to its clients and record it;
:class:`ForwardAbort`
    these tasks are on that engine: ask it to drop the ones it has not started.

An engine whose job nears its walltime *drains* (:meth:`TaskQueue.drain`):
it gets no new task, and the tasks it hands back unstarted wait for another
engine, neither failed nor counted as a retry.  A task that declares its
``expected_runtime`` goes only to an engine whose deadline (if it has one)
leaves it that long.

A task's own result is delivered by the hub (it holds the frames); it then
tells the queue with :meth:`TaskQueue.complete`, which releases the tasks
waiting on it.  What the queue decides — which engine a load-balanced task
goes to (the scheduler plugin, within the high-water mark), when a failed
task is retried and where not, when dependencies are met or can never be,
when a task waited too long — is tested without processes in
core/tests/test_taskqueue.py.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from ..scheduler import Scheduler

QUEUES = ("mux", "task")  # "mux": to the one engine named (DirectView); "task": load-balanced


@dataclass(eq=False, kw_only=True)
class Task:
    """What the queue knows of a task.  The hub subclasses it to keep the
    message and who waits for the result."""

    msg_id: str
    queue: str = "task"
    targets: list[int] | None = None  # engines allowed (None: any); exactly one for "mux"
    retries: int = 0  # times left to run it again after an error or an engine's death
    after: list[str] = field(default_factory=list)  # msg_ids to finish first
    follow: list[str] = field(default_factory=list)  # msg_ids to finish first, on the engine it runs on
    timeout: float | None = None  # seconds it may wait for dependencies and an engine
    # Seconds the task expects to run: it goes only to an engine whose deadline leaves it that long.
    expected_runtime: float | None = None
    owner: str = ""  # the submitting client's session: what a client's abort-everything means
    # The task's buffers are in shared-memory files only engines of this memory
    # domain can read (cluster_launcher.protocol.bulk.domain); None: no such files.
    shm_domain: str | None = None

    engine_id: int | None = None  # where it runs; None while it waits in the controller
    blacklist: set[int] = field(default_factory=set)  # engines it failed on
    unmet: int = 0  # dependencies not finished yet
    deadline: float | None = None


@dataclass(eq=False, kw_only=True)
class Engine:
    """What the queue knows of an engine.  The hub subclasses it to keep the
    engine's routing id and heartbeat."""

    id: int
    uuid: str  # public: shown to clients, stored in task records
    hostname: str = ""
    pid: int = 0
    domain: str | None = None  # who can read its shared-memory files
    in_flight: dict[str, Task] = field(default_factory=dict)
    lb_load: int = 0  # load-balanced tasks in flight (what the scheduler and hwm see)
    completed: int = 0
    failed: int = 0  # tasks that raised on it (their own exception: the engine lived on)
    deadline: float | None = None  # epoch seconds its job's walltime ends it; None: no known end
    draining: bool = False  # leaving (its walltime, a signal): it gets no new task
    idle_since: float | None = None  # epoch seconds since it has had no task in flight; None while it has one


@dataclass
class Dispatch:
    task: Task
    engine: Engine


@dataclass
class Requeue:
    task: Task


@dataclass
class Fail:
    task: Task
    kind: str  # "engine", "dependency", "timeout", "aborted"
    ename: str
    evalue: str
    engine_id: int | None = None


@dataclass
class ForwardAbort:
    engine: Engine
    msg_ids: list[str]


Action = Dispatch | Requeue | Fail | ForwardAbort
TaskT = TypeVar("TaskT", bound=Task)
EngineT = TypeVar("EngineT", bound=Engine)
# (succeeded, uuid of the engine it ran on) of a task the queue no longer
# remembers; KeyError for a task never seen.
RecordedOutcome = Callable[[str], tuple[bool, "str | None"]]


def _never_seen(msg_id: str) -> tuple[bool, str | None]:
    raise KeyError(msg_id)


class TaskQueue(Generic[TaskT, EngineT]):
    """Pending tasks, registered engines and what finished recently."""

    def __init__(self, scheduler: Scheduler, hwm: int = 0, memory: int = 10_000,
                 recorded_outcome: RecordedOutcome = _never_seen, clock: Callable[[], float] = time.time):
        self.scheduler = scheduler
        # Epoch seconds, as engines' deadlines are (a batch job's end is a time of day, not a
        # monotonic one); tests give their own.
        self.clock = clock
        self.hwm = hwm  # most load-balanced tasks in flight on one engine (0: no limit)
        self.memory = memory  # finished tasks remembered for dependencies
        self.recorded_outcome = recorded_outcome  # older ones: asked of the task database
        self.engines: OrderedDict[int, EngineT] = OrderedDict()  # least recently used first
        self.tasks: dict[str, TaskT] = {}  # pending: waiting or running
        self.ready: deque[TaskT] = deque()  # load-balanced tasks waiting for an engine
        self.blocked: dict[str, list[TaskT]] = {}  # dependency msg_id -> tasks waiting on it
        self.finished: OrderedDict[str, tuple[bool, int | None]] = OrderedDict()
        self.deadlines: list[tuple[float, str]] = []  # a heap of (when, msg_id)
        self.actions: list[Action] = []

    def take_actions(self) -> list[Action]:
        """What to do, in order, since the last call."""
        actions, self.actions = self.actions, []
        return actions

    # --- questions -------------------------------------------------------

    def knows(self, msg_id: str) -> bool:
        """Whether ``msg_id`` is pending or finished recently (never run a task twice)."""
        return msg_id in self.tasks or msg_id in self.finished

    def pending(self, msg_id: str) -> TaskT | None:
        return self.tasks.get(msg_id)

    def unassigned(self) -> int:
        """Tasks waiting in the controller: for an engine, or for dependencies."""
        waiting = {task.msg_id for tasks in self.blocked.values() for task in tasks}
        return len(self.ready) + len(waiting)

    def outstanding(self, owner: str, targets: Iterable[int] | None = None) -> list[str]:
        """The pending tasks of client ``owner`` (those on ``targets`` or not
        on an engine yet, when ``targets`` is given): what its abort-everything
        aborts, as in ipyparallel."""
        allowed = None if targets is None else set(targets)
        return [t.msg_id for t in self.tasks.values() if t.owner == owner
                and (allowed is None or t.engine_id is None or t.engine_id in allowed)]

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    # --- engines ---------------------------------------------------------

    def add_engine(self, engine: EngineT) -> None:
        self.engines[engine.id] = engine
        if not engine.in_flight:
            engine.idle_since = self.clock()
        self.schedule()

    def drain(self, engine_id: int, handed_back: Iterable[str] = ()) -> EngineT | None:
        """The engine is leaving (its job's walltime is near, or it was told
        to): it gets no new task, and the tasks of ``handed_back`` it holds
        unstarted go back to the queue's head for another engine; neither a
        failure nor a retry, since they never ran.  A DirectView task named
        that engine and no other: it fails.  Called again, it takes back the
        tasks sent before the engine's first word reached the controller."""
        engine = self.engines.get(engine_id)
        if engine is None:
            return None
        engine.draining = True
        for msg_id in reversed(list(dict.fromkeys(handed_back))):  # reversed: each goes to the head
            task = engine.in_flight.pop(msg_id, None)
            if task is None:
                continue  # finished, aborted, or never this engine's
            if task.queue == "task":
                engine.lb_load -= 1
                # Its frames are untouched (the engine never read them, shared-memory files
                # included), so the hub sends them again as they are: no Requeue.
                task.engine_id = None
                self.ready.appendleft(cast(TaskT, task))
            else:
                self._fail(cast(TaskT, task), "engine", "EngineError",
                           f"engine {engine.id} ({engine.hostname}, pid {engine.pid}) left before running this "
                           "task (it drained: its job's walltime was near)", engine_id=engine.id)
        if not engine.in_flight and engine.idle_since is None:
            engine.idle_since = self.clock()
        self.schedule()
        return engine

    def remove_engine(self, engine_id: int, reason: str) -> EngineT | None:
        """The engine left (``reason``: 'shutdown', 'heartbeat', ...): its
        tasks are retried elsewhere when they may be, else failed."""
        engine = self.engines.pop(engine_id, None)
        if engine is None:
            return None
        for task in [cast(TaskT, t) for t in engine.in_flight.values()]:
            engine.in_flight.pop(task.msg_id)
            if task.queue == "task" and task.retries > 0:
                task.retries -= 1
                task.blacklist.add(engine.id)
                self._requeue(task)
            else:
                self._fail(task, "engine", "EngineError",
                          f"engine {engine.id} ({engine.hostname}, pid {engine.pid}) died or left "
                          f"({reason}) while running this task", engine_id=engine.id)
        self._fail_unreachable()
        self.schedule()
        return engine

    def adopt(self, task: TaskT, engine: EngineT) -> bool:
        """A task ``engine`` says it holds as it registers again with a
        restarted controller: in flight on it, as if dispatched (no
        :class:`Dispatch`: it is there already).  Call before
        :meth:`add_engine`.  False (nothing changes) for a task already known:
        never run a task twice."""
        if self.knows(task.msg_id) or task.msg_id in engine.in_flight:
            return False
        self.tasks[task.msg_id] = task
        task.engine_id = engine.id
        engine.in_flight[task.msg_id] = task
        engine.idle_since = None
        if task.queue == "task":
            engine.lb_load += 1
        return True

    # --- tasks -----------------------------------------------------------

    def submit(self, task: TaskT, now: float) -> None:
        """A new task (its msg_id not :meth:`known <knows>`)."""
        self.tasks[task.msg_id] = task
        if task.queue == "mux":  # to one engine, now: no dependencies, no timeout
            engine = self.engines.get(task.targets[0] if task.targets else -1)
            if engine is None:
                self._fail(task, "engine", "EngineError", f"no engine with id {task.targets} is registered")
            elif engine.draining:
                self._fail(task, "engine", "EngineError", f"engine {engine.id} is draining (its job's walltime "
                           "is near) and takes no new task")
            else:
                self._assign(task, engine)
            return
        if task.timeout:
            task.deadline = now + task.timeout
            heapq.heappush(self.deadlines, (task.deadline, task.msg_id))
        if task.targets is not None and not set(task.targets) & set(self.engines):
            self._fail(task, "engine", "EngineError", f"none of the engines the task may run on "
                      f"(targets {task.targets}) is registered")
            return
        unmet = 0
        for dep in {*task.after, *task.follow}:
            state = self._dependency_state(dep)
            if state is None:
                unmet += 1
                self.blocked.setdefault(dep, []).append(task)
            elif not state[0]:
                self._fail(task, "dependency", "DependencyError", f"dependency {dep} failed")
                return
        task.unmet = unmet
        if unmet == 0:
            self.ready.append(task)
            self.schedule()

    def returned(self, msg_id: str, engine_id: int | None) -> TaskT | None:
        """The engine sent the task back (a result or an error): free its
        place.  None (and nothing changes) unless the task is pending on that
        engine — a late reply from an engine declared dead, or from one that
        never had the task, is never a task's result."""
        task = self.tasks.get(msg_id)
        engine = self.engines.get(engine_id) if engine_id is not None else None
        if task is None or engine is None or task.engine_id != engine.id:
            return None
        engine.in_flight.pop(task.msg_id, None)
        engine.completed += 1
        if task.queue == "task":
            engine.lb_load -= 1
        if not engine.in_flight:
            engine.idle_since = self.clock()
        return task

    def retry(self, task: TaskT, failed_on: int) -> bool:
        """After :meth:`returned` with an error: run the task again elsewhere
        if it has retries left and another allowed engine is registered."""
        if task.queue != "task" or task.retries <= 0:
            return False
        allowed = set(task.targets) if task.targets is not None else set(self.engines)
        if not (allowed & set(self.engines)) - task.blacklist - {failed_on}:
            return False  # nowhere to retry: it ends with its own error
        task.retries -= 1
        task.blacklist.add(failed_on)
        self._requeue(task)
        self.schedule()
        return True

    def complete(self, task: TaskT, ok: bool) -> None:
        """The hub delivered the task's result: remember it and release (or
        fail) the tasks waiting on it."""
        self._finish(task, ok)
        self.schedule()

    def fail(self, task: TaskT, kind: str, ename: str, evalue: str, engine_id: int | None = None) -> None:
        """End the task with an error (emits :class:`Fail`)."""
        self._fail(task, kind, ename, evalue, engine_id)
        self.schedule()

    def abort(self, msg_ids: Iterable[str]) -> list[str]:
        """Abort these tasks: those still in the controller end at once (their
        ids are returned); those on an engine are forwarded to it."""
        aborted: list[str] = []
        by_engine: dict[int, list[str]] = {}
        for msg_id in msg_ids:
            task = self.tasks.get(msg_id)
            if task is None:
                continue
            if task.engine_id is None:
                self._discard_waiting(task)
                self._fail(task, "aborted", "TaskAborted", "the task was aborted before it ran")
                aborted.append(msg_id)
            else:  # the engine aborts it if it has not started it
                by_engine.setdefault(task.engine_id, []).append(msg_id)
        for engine_id, ids in by_engine.items():
            self.actions.append(ForwardAbort(self.engines[engine_id], ids))
        return aborted

    def expire(self, now: float) -> None:
        """Fail the tasks whose timeout ran out before they reached an engine."""
        while self.deadlines and self.deadlines[0][0] <= now:
            _, msg_id = heapq.heappop(self.deadlines)
            task = self.tasks.get(msg_id)
            if task is not None and task.engine_id is None:
                self._discard_waiting(task)
                self._fail(task, "timeout", "TaskTimeout",
                          f"the task waited {task.timeout}s for its dependencies or an engine")

    # --- scheduling ------------------------------------------------------

    def schedule(self) -> None:
        """Hand ready load-balanced tasks to engines, in submission order."""
        if not self.ready or not self.engines:
            return
        skipped: list[TaskT] = []
        while self.ready:
            task = self.ready.popleft()
            candidates = self._candidates(task)
            if candidates is None:  # can never run: failed
                continue
            if not candidates:
                skipped.append(task)
                if self.hwm and all(e.lb_load >= self.hwm for e in self.engines.values()):
                    break  # every engine is full: the rest must wait too
                continue
            loads = [e.lb_load for e in candidates]
            self._assign(task, candidates[self.scheduler.choose(loads)])
        self.ready.extendleft(reversed(skipped))

    def _candidates(self, task: TaskT) -> list[EngineT] | None:
        """The engines that may take ``task`` now (least recently used first);
        None if none ever could (the task is failed)."""
        engines: Iterable[EngineT] = self.engines.values()
        if task.targets is not None or task.follow or task.blacklist or task.shm_domain is not None:
            allowed = set(self.engines) if task.targets is None else set(task.targets) & set(self.engines)
            if task.shm_domain is not None:
                allowed &= {e.id for e in self.engines.values() if e.domain and e.domain == task.shm_domain}
            for dep in task.follow:
                state = self._dependency_state(dep)
                allowed &= {state[1]} if state and state[1] is not None else set()
            allowed -= task.blacklist
            if not allowed:
                if task.targets is not None and not set(task.targets) & set(self.engines):
                    self._fail(task, "engine", "EngineError", f"none of the engines the task may run on "
                              f"(targets {task.targets}) is registered any more")
                elif task.blacklist and not (set(task.targets or self.engines) - task.blacklist):
                    self._fail(task, "engine", "EngineError", "no engine left to retry the task on")
                else:
                    self._fail(task, "dependency", "DependencyError",
                              "no registered engine can take the task (its targets, follow dependencies, "
                              "or shared-memory buffers rule them all out)")
                return None
            engines = [e for e in engines if e.id in allowed]
        # Not a reason to fail the task, but to wait: another engine may come (or, for a
        # task on its targets only, the draining one leaves and the task fails then).
        engines = [e for e in engines if not e.draining]
        if task.expected_runtime:
            finish = self.clock() + task.expected_runtime
            engines = [e for e in engines if e.deadline is None or e.deadline > finish]
        if self.hwm:
            return [e for e in engines if e.lb_load < self.hwm]
        return list(engines)

    def _assign(self, task: TaskT, engine: EngineT) -> None:
        task.engine_id = engine.id
        engine.in_flight[task.msg_id] = task
        engine.idle_since = None
        if task.queue == "task":
            engine.lb_load += 1
            self.engines.move_to_end(engine.id)  # most recently used last
        self.actions.append(Dispatch(task, engine))

    def _fail(self, task: TaskT, kind: str, ename: str, evalue: str, engine_id: int | None = None) -> None:
        # Never schedules: it is called while scheduling (a task no engine can take).
        self.actions.append(Fail(task, kind, ename, evalue, engine_id))
        self._finish(task, ok=False)

    def _finish(self, task: TaskT, ok: bool) -> None:
        self.tasks.pop(task.msg_id, None)
        self.finished[task.msg_id] = (ok, task.engine_id)
        if len(self.finished) > self.memory:
            self.finished.popitem(last=False)
        for waiting in self.blocked.pop(task.msg_id, []):
            if waiting.msg_id not in self.tasks:
                continue  # already failed or aborted
            if not ok:
                self._discard_waiting(waiting)
                self._fail(waiting, "dependency", "DependencyError", f"dependency {task.msg_id} failed")
                continue
            waiting.unmet -= 1
            if waiting.unmet == 0:
                self.ready.append(waiting)

    def _requeue(self, task: TaskT) -> None:
        """Put a task to be retried at the head of the queue; the hub sends it
        again inline, so any engine may read it."""
        task.engine_id = None
        task.shm_domain = None
        self.actions.append(Requeue(task))
        self.ready.appendleft(task)

    def _dependency_state(self, msg_id: str) -> tuple[bool, int | None] | None:
        """``(succeeded, engine_id)`` of a finished task, None while it is pending."""
        if msg_id in self.tasks:
            return None
        if msg_id in self.finished:
            return self.finished[msg_id]
        try:
            ok, engine_uuid = self.recorded_outcome(msg_id)
        except KeyError:
            return (False, None)  # unknown: can never be met
        engine_id = next((e.id for e in self.engines.values() if e.uuid == engine_uuid), None)
        return (ok, engine_id)

    def _fail_unreachable(self) -> None:
        """Fail the waiting tasks none of whose target engines is registered
        any more (engine ids are never reused, so they could never run)."""
        registered = set(self.engines)
        waiting = {t.msg_id: t for t in (*self.ready, *(t for ts in self.blocked.values() for t in ts))}
        for task in waiting.values():
            if task.targets is not None and not set(task.targets) & registered and task.msg_id in self.tasks:
                self._discard_waiting(task)
                self._fail(task, "engine", "EngineError", f"none of the engines the task may run on "
                           f"(targets {task.targets}) is registered any more")

    def _discard_waiting(self, task: TaskT) -> None:
        if task in self.ready:
            self.ready.remove(task)
        for waiting in self.blocked.values():
            if task in waiting:
                waiting.remove(task)
