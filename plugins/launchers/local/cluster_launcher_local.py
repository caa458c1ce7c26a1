"""Start the controller and engines as processes on this host."""

from __future__ import annotations

import signal

from traitlets import Instance, Integer, List

from cluster_launcher import hookimpl
from cluster_launcher.launcher import ControllerLauncher, DeadEngine, EngineSetLauncher, LocalProcessLauncher


class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher):
    """The controller as a process of this host, logging to ``log/controller-<id>.log``."""

    log_name = "controller"


class LocalEngineLauncher(LocalProcessLauncher, EngineSetLauncher):
    """One local engine process (a building block of LocalEngineSetLauncher)."""

    log_name = "engine"


class LocalEngineSetLauncher(EngineSetLauncher):
    """``n`` local engine processes, each logging to ``log/engine-<i>-<id>.log``."""

    first_index = Integer(0, help="Number of the first engine's log file, so engines added to "
                          "a running cluster do not share logs with the first ones.").tag(config=False, state=True)
    engines = List(Instance(LocalEngineLauncher), help="One launcher per engine started, each "
                   "recorded with its PID.").tag(config=False, state=True)

    def start(self, n: int = 1) -> None:
        first = self.first_index + len(self.engines)
        for i in range(first, first + n):
            engine = self.child_launcher(LocalEngineLauncher, n=1)
            engine.log_name = f"engine-{i}"
            engine.start()
            self.engines.append(engine)
        self.n = len(self.engines)

    def dry_run(self, n: int = 1) -> list[str]:
        return [f"{line}   (x{n}, one process each)" for line in super().dry_run(n)]

    def dead_engines(self) -> list[DeadEngine]:
        # Exit codes are known for this process's own children only: an engine started by another process
        # (`cluster-launcher engines`, an earlier `start`) that ended reads as 0, so it is never restarted.
        dead = []
        for i, engine in enumerate(self.engines):
            slot = self.first_index + i
            code = engine.poll()
            if code not in (None, 0) and str(slot) not in self.given_up:
                dead.append(DeadEngine(slot, code, engine.log_path, f"engine slot {slot}"))
        return dead

    def restart_engine(self, slot: int) -> None:
        i = slot - self.first_index
        engine = self.child_launcher(LocalEngineLauncher, n=1)
        engine.log_name = f"engine-{slot}"  # the same log file, appended to
        engine.start()
        self.engines = [*self.engines[:i], engine, *self.engines[i + 1:]]
        self.count_restart(slot)

    def poll(self) -> int | None:
        codes = [engine.poll() for engine in self.engines]
        return None if any(code is None for code in codes) else max(codes, default=0)

    def running_engines(self) -> int:
        return sum(engine.poll() is None for engine in self.engines)

    def exited(self) -> list[tuple[int, str, list[str]]]:
        return [report for engine in self.engines for report in engine.exited()]

    def describe(self) -> str:
        if len(self.engines) == 1:
            return self.engines[0].describe()
        logs = f"{self.engines[0].log_path} … {self.engines[-1].log_path}" if self.engines else "none"
        return f"pids {', '.join(str(engine.pid) for engine in self.engines)}; logs {logs}"

    def signal(self, sig: int) -> None:
        for engine in self.engines:
            engine.signal(sig)

    def stop(self) -> None:
        # All at once, then one shared deadline (this set's wait: until no
        # engine runs): n engines stop within one stop_timeout, not n of them.
        for engine in self.engines:
            engine.killed = ()
        self.signal(signal.SIGTERM)
        self.wait(self.stop_timeout)
        for engine in self.engines:
            if engine.poll() is None:
                engine.kill()  # one after the other: SIGKILL ends a process within milliseconds
        self.killed = tuple(line for engine in self.engines for line in engine.killed)


@hookimpl
def cluster_launcher_register_launchers():
    return [LocalControllerLauncher, LocalEngineSetLauncher]
