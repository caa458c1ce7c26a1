"""Self-healing engine sets: an engine process that died is started again,
with backoff, up to ``Cluster.engine_restart_limit`` times per engine slot
(``cluster-launcher start --engine-restart-limit=N``), then given up with one
log line.

Two parts, as adaptive scaling: :class:`RestartPolicy` is pure (a death in,
"restart at", "give up" out; its own tests without processes), and
:class:`EngineRestarter` applies it to a running cluster's engine sets
through their launchers (:meth:`~cluster_launcher.launcher.EngineSetLauncher.dead_engines`,
:meth:`~cluster_launcher.launcher.EngineSetLauncher.restart_engine`).  Whoever
watches the cluster calls :meth:`EngineRestarter.step` often: the foreground
``start``, the watcher process of ``start --daemonize``, or the supervisor
thread of :class:`~cluster_launcher.cluster.Cluster` in Python.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..error import ClusterLauncherError
from ..launcher import DeadEngine, EngineSetLauncher

if TYPE_CHECKING:
    from .cluster import Cluster

BACKOFF_CAP = 30.0  # seconds: the longest wait before a restart, however often the slot died


def exit_reason(code: int) -> str:
    """How an engine process ended, for a log line: 'killed by SIGKILL',
    'exited with code 1', or the interrupt helper's own exit."""
    from ..engine.engine import EXIT_TASK_IGNORED_INTERRUPT  # zmq and friends: only when an engine died

    if code == EXIT_TASK_IGNORED_INTERRUPT:
        return "killed: its task ignored an interrupt (Engine.interrupt_grace)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead engine's slot is started again, and when it is given up."""

    limit: int = 3  # restarts per slot; 0: none
    first_delay: float = 1.0  # seconds before the first restart; doubled for each one after, up to BACKOFF_CAP

    def delay(self, restarts_so_far: int) -> float:
        """Seconds between a death and the restart that follows it."""
        return min(self.first_delay * 2 ** restarts_so_far, BACKOFF_CAP)

    def gives_up(self, restarts_so_far: int) -> bool:
        return restarts_so_far >= self.limit

    def give_up_line(self, label: str, log_path: str, restarts_so_far: int, code: int) -> str:
        log = f" (log {log_path})" if log_path else ""
        return (f"{label}{log}: died {restarts_so_far + 1} times (last: {exit_reason(code)}); not restarted "
                f"again (Cluster.engine_restart_limit = {self.limit})")


class EngineRestarter:
    """Restarts the dead engines of one cluster, each after its backoff
    (:meth:`step` never sleeps: it starts what is due and returns)."""

    def __init__(self, cluster: Cluster, policy: RestartPolicy, say: Callable[[str], None],
                 may_restart: Callable[[], bool] = lambda: True):
        self.cluster = cluster
        self.policy = policy
        self.say = say
        # False once a stop was requested (`cluster-launcher stop` elsewhere): then nothing is started again.
        self.may_restart = may_restart
        self._due: dict[tuple[int, int], float] = {}  # (id of the engine set, slot) -> when to restart it

    def step(self) -> None:
        """Notice new deaths (said at once), give up the slots over the limit,
        restart those whose backoff has passed; not while the controller is
        down (an engine that lost its controller ends too: it would only die
        again), nor once a stop was requested."""
        if not self.cluster.running() or not self.may_restart():  # engines a stop ends are not deaths to say
            self._due.clear()
            return
        now = time.monotonic()
        for engines in list(self.cluster.engine_sets):
            for dead in engines.dead_engines():
                key = (id(engines), dead.slot)
                restarts = engines.restarts.get(str(dead.slot), 0)
                if key in self._due:
                    if now >= self._due[key]:
                        del self._due[key]
                        self._restart(engines, dead, restarts)
                    continue
                if self.policy.gives_up(restarts):
                    line = self.policy.give_up_line(dead.label, dead.log_path, restarts, dead.code)
                    engines.given_up = {**engines.given_up, str(dead.slot): line}
                    self.cluster.save_state()  # recorded before it is said: whoever reads the line finds it
                    self.say(line)
                    continue
                delay = self.policy.delay(restarts)
                self._due[key] = now + delay
                self.say(f"{dead.label} {exit_reason(dead.code)} (see {dead.log_path}); restart "
                         f"{restarts + 1} of {self.policy.limit} in {delay:g}s")

    def _restart(self, engines: EngineSetLauncher, dead: DeadEngine, restarts: int) -> None:
        try:
            engines.restart_engine(dead.slot)
        except (ClusterLauncherError, OSError) as exc:  # counted: a slot that cannot start must not loop forever
            engines.restarts = {**engines.restarts, str(dead.slot): restarts + 1}
            self.cluster.save_state()
            self.say(f"{dead.label}: restart {restarts + 1} failed: {exc}")
            return
        self.cluster.save_state()
        self.say(f"{dead.label} restarted ({restarts + 1} of {self.policy.limit}; new engine ids), log {dead.log_path}")


class Supervisor:
    """The thread that watches a :class:`Cluster` started in Python: it runs
    :meth:`EngineRestarter.step` every ``interval`` seconds until :meth:`stop`
    (which :meth:`Cluster.stop` calls first)."""

    def __init__(self, restarter: EngineRestarter, interval: float):
        self.restarter = restarter
        self.interval = interval
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stop() waits for a restart in progress, so stop() reaches its engine
        self._thread = threading.Thread(target=self._run, name="cluster-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self.restarter.step()
                except Exception as exc:  # a failed step is tried again next time; the cluster keeps running
                    self.restarter.cluster.log.warning("engine restarts: %s", exc)

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop watching (the engines stay); safe to call twice."""
        self._stopping.set()
        with self._lock:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 10)
