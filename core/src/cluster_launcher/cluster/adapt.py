"""Adaptive scaling: engines asked for while load-balanced tasks wait, and
given back once idle (``cluster.adapt(minimum=0, maximum=64)``,
``cluster-launcher start --adapt --min=0 --max=64``).

Two parts, the way Dask splits its worker state machine from its I/O:
:class:`AdaptivePolicy` is pure (an :class:`Observation` in, a
:class:`Decision` out, its own fast table-driven tests), and
:class:`Adaptive` observes a running cluster, asks the policy and carries
the decision out through the cluster's launchers and a client.

The policy's rules:

- The target is one engine per load-balanced task running or waiting,
  within ``[minimum, maximum]`` (an engine busy with tasks sent to it by
  name counts as one).  New engines get only tasks that wait in the
  controller, so an adaptive cluster's controller hands out one task per
  engine at a time (``c.TaskScheduler.hwm = 1``, which ``start --adapt``
  sets unless you set it).
- Engines asked for but not registered yet (queued jobs, starting
  processes) count as engines: a slow queue is never asked twice for the
  same load.
- More engines are asked for at once; fewer only after the cluster has had
  more than its target for ``scale_in_wait`` decisions in a row
  (hysteresis: load that comes and goes does not make engines come and go),
  and then queued requests are cancelled first, and only engines idle for
  ``idle_timeout`` seconds are shut down, the longest idle first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client import Client
    from .cluster import Cluster


@dataclass(frozen=True)
class EngineLoad:
    """One registered engine, as the policy sees it."""

    engine_id: int
    busy: bool  # a task runs (or waits) on it
    idle_for: float = 0.0  # seconds since it last had a task (0 while busy)
    draining: bool = False  # leaving by itself (near its job's walltime): neither counted nor retired
    tasks: int = 0  # load-balanced tasks sent to it and not finished

    @property
    def demand(self) -> int:
        """The engines its tasks could keep busy."""
        return max(self.tasks, 1 if self.busy else 0)


@dataclass(frozen=True)
class Observation:
    engines: tuple[EngineLoad, ...] = ()
    waiting_tasks: int = 0  # load-balanced tasks no engine has yet
    requested: int = 0  # engines asked for and not registered yet
    queued_jobs: int = 0  # jobs of the cluster waiting in a batch queue


@dataclass(frozen=True)
class Decision:
    start: int = 0  # engines to ask for
    cancel: int = 0  # engines asked for (still queued) to cancel
    retire: tuple[int, ...] = ()  # engine ids to shut down
    reason: str = ""

    @property
    def acts(self) -> bool:
        return bool(self.start or self.cancel or self.retire)


@dataclass
class AdaptivePolicy:
    """Decides how many engines to ask for or give back (see the module's docstring)."""

    minimum: int = 0
    maximum: int = 64
    idle_timeout: float = 60.0
    scale_in_wait: int = 3
    max_queued_jobs: int = 0  # 0: no cap on the jobs waiting in the queue
    _over_target: int = field(default=0, init=False, repr=False)  # decisions in a row with more than the target

    def __post_init__(self) -> None:
        if self.minimum < 0 or self.maximum < max(self.minimum, 1):
            raise ValueError(f"adaptive scaling needs 0 <= minimum <= maximum and maximum >= 1 "
                             f"(got minimum={self.minimum}, maximum={self.maximum})")

    def decide(self, seen: Observation) -> Decision:
        live = [engine for engine in seen.engines if not engine.draining]
        busy = sum(engine.busy for engine in live)
        target = min(max(sum(engine.demand for engine in live) + seen.waiting_tasks, self.minimum), self.maximum)
        have = len(live) + seen.requested
        load = (f"{seen.waiting_tasks} tasks waiting, {busy} of {len(live)} engines busy, "
                f"{seen.requested} asked for")
        if have < target:
            self._over_target = 0
            if self.max_queued_jobs and seen.queued_jobs >= self.max_queued_jobs:
                return Decision(reason=f"would ask for {target - have} engines ({load}) but {seen.queued_jobs} jobs "
                                       f"already wait in the queue (max_queued_jobs={self.max_queued_jobs})")
            return Decision(start=target - have, reason=f"asking for {target - have} engines: {load}")
        if have == target:
            self._over_target = 0
            return Decision(reason=f"steady at {target}: {load}")
        self._over_target += 1
        surplus = have - target
        if self._over_target < self.scale_in_wait:
            return Decision(reason=f"{surplus} more than needed ({load}); waiting "
                                   f"{self.scale_in_wait - self._over_target} more decisions before scaling in")
        cancel = min(surplus, seen.requested)
        idle = sorted((engine for engine in live if not engine.busy and engine.idle_for >= self.idle_timeout),
                      key=lambda engine: -engine.idle_for)
        retire = tuple(engine.engine_id for engine in idle[:surplus - cancel])
        if not cancel and not retire:
            return Decision(reason=f"{surplus} more than needed ({load}); none idle for "
                                   f"{self.idle_timeout:g}s yet")
        self._over_target = 0
        said = [f"cancelling {cancel} queued" if cancel else "",
                f"retiring {len(retire)} idle engine{'s' if len(retire) != 1 else ''} "
                f"({', '.join(map(str, retire))})" if retire else ""]
        return Decision(cancel=cancel, retire=retire, reason=f"{' and '.join(s for s in said if s)}: {load}")


class Adaptive:
    """Keeps a running :class:`Cluster` at the size :class:`AdaptivePolicy`
    asks for: :meth:`step` observes and acts once; :meth:`start` does it
    every ``interval`` seconds in a thread (``Cluster.adapt``), while a
    foreground ``cluster-launcher start --adapt`` calls :meth:`step` from its
    own loop."""

    def __init__(self, cluster: Cluster, policy: AdaptivePolicy, interval: float = 5.0, replace_lead: float = 0.0):
        self.cluster = cluster
        self.policy = policy
        self.interval = interval
        # Seconds before an engine's deadline (its job's walltime) from which it counts as leaving, so that
        # its replacement is asked for while it still works: the new job waits in the queue meanwhile.
        self.replace_lead = replace_lead
        self.last: Decision | None = None
        self.last_at = 0.0
        self.acted: deque[Decision] = deque(maxlen=100)  # the latest decisions that started or stopped engines
        self._client: Client | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- observing ------------------------------------------------------------------------------------

    def observe(self, client: Client) -> Observation:
        status = client.queue_status()
        waiting = int(status.pop("unassigned", 0) or 0)
        now = time.time()
        engines = []
        for engine_id, load in sorted(status.items()):
            busy = bool(load.get("queue") or load.get("tasks"))
            idle_since = load.get("idle_since")  # None while it has a task
            deadline = load.get("deadline")
            leaving = bool(load.get("draining")) or (
                isinstance(deadline, (int, float)) and self.replace_lead > 0 and deadline - now < self.replace_lead)
            idle_for = max(0.0, now - idle_since) if isinstance(idle_since, (int, float)) and not busy else 0.0
            engines.append(EngineLoad(engine_id, busy, idle_for, leaving, int(load.get("tasks") or 0)))
        active = sum(engine_set.active_engines() for engine_set in self.cluster.engine_sets)
        queued = sum(engine_set.queued_jobs() for engine_set in self.cluster.engine_sets)
        return Observation(tuple(engines), waiting, max(0, active - len(engines)), queued)

    # --- acting -----------------------------------------------------------------------------------------

    def step(self) -> Decision:
        """Observe the cluster, decide, act; the decision (logged when it acts)."""
        if self._client is None:
            self._client = self.cluster.new_client(timeout=10)
        decision = self.policy.decide(self.observe(self._client))
        if decision.cancel:
            left = decision.cancel
            for engine_set in reversed(self.cluster.engine_sets):
                if left:
                    left -= engine_set.cancel_queued(left)
        if decision.retire:
            self._client.shutdown(targets=list(decision.retire), block=True)
        if decision.start:
            self.cluster.start_engines(decision.start)
        self.cluster.forget_ended_engine_sets()
        if decision.acts:
            self.acted.append(decision)
            self.cluster.log.info("adapt: %s", decision.reason)
        if decision.acts or self.last is None or decision.reason != self.last.reason:
            self.last, self.last_at = decision, time.time()
            self.cluster.save_state()
        return decision

    def to_dict(self) -> dict[str, Any]:
        """What ``cluster-launcher list`` shows of it."""
        said = self.last.reason if self.last else "no decision yet"
        at = datetime.fromtimestamp(self.last_at).isoformat(timespec="seconds") if self.last_at else ""
        return {"minimum": self.policy.minimum, "maximum": self.policy.maximum, "last": said, "at": at}

    # --- in a thread (the Python API) -------------------------------------------------------------------

    def start(self) -> Adaptive:
        self._thread = threading.Thread(target=self._run, name="cluster-adapt", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception as exc:  # a failed step (a busy scheduler) is tried again next time
                self.cluster.log.warning("adapt: %s", exc)
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        """Stop adapting (the engines stay); safe to call twice."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(self.interval, 1.0) + 60)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None

