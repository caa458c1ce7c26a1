"""Start the controller and engines as processes on this host."""

from __future__ import annotations

import signal
import time
from typing import Any

from traitlets import Integer

from cluster_launcher import hookimpl
from cluster_launcher.launcher import ControllerLauncher, EngineSetLauncher, LocalProcessLauncher


class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher):
    """The controller as a process of this host, logging to ``log/controller-<id>.log``."""

    log_name = "controller"


class LocalEngineLauncher(LocalProcessLauncher, EngineSetLauncher):
    """One local engine process (a building block of LocalEngineSetLauncher)."""

    log_name = "engine"


class LocalEngineSetLauncher(EngineSetLauncher):
    """``n`` local engine processes, each logging to ``log/engine-<i>-<id>.log``."""

    first_index = Integer(0, help="Number of the first engine's log file, so engines added to "
                          "a running cluster do not share logs with the first ones.").tag(config=False)

    def _engines(self) -> list[LocalEngineLauncher]:
        if not hasattr(self, "engines"):
            self.engines: list[LocalEngineLauncher] = []
        return self.engines

    def start(self, n: int = 1) -> None:
        engines = self._engines()
        first = self.first_index + len(engines)
        for i in range(first, first + n):
            engine = LocalEngineLauncher(parent=self, profile_dir=self.profile_dir, cluster_id=self.cluster_id,
                                         engine_cmd=self.engine_cmd, engine_args=self.engine_args,
                                         environment=self.environment, stop_timeout=self.stop_timeout)
            engine.log_name = f"engine-{i}"
            engine.n = 1
            engine.start()
            engines.append(engine)
        self.n = len(engines)

    def poll(self) -> int | None:
        codes = [engine.poll() for engine in self._engines()]
        return None if any(code is None for code in codes) else max(codes, default=0)

    def running_engines(self) -> int:
        return sum(engine.poll() is None for engine in self._engines())

    def exited(self) -> list[tuple[int, str, list[str]]]:
        return [report for engine in self._engines() for report in engine.exited()]

    def describe(self) -> str:
        engines = self._engines()
        if len(engines) == 1:
            return engines[0].describe()
        logs = f"{engines[0].log_path} … {engines[-1].log_path}" if engines else "none"
        return f"pids {', '.join(str(engine.pid) for engine in engines)}; logs {logs}"

    def signal(self, sig: int) -> None:
        for engine in self._engines():
            engine.signal(sig)

    def stop(self) -> None:
        # All at once, then one shared deadline: n engines stop within one
        # stop_timeout, not n of them.
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for engine in self._engines():
            engine.wait(max(0.0, deadline - time.monotonic()))
        stubborn = [engine for engine in self._engines() if engine.poll() is None]
        if stubborn:
            self.log.warning("engines %s ignored SIGTERM for %ss; sending SIGKILL",
                             [engine.pid for engine in stubborn], self.stop_timeout)
            for engine in stubborn:
                engine.signal(signal.SIGKILL)
            for engine in stubborn:
                engine.wait(self.stop_timeout)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "first_index": self.first_index,
                "engines": [engine.to_dict() for engine in self._engines()]}

    def load_state(self, data: dict[str, Any]) -> None:
        super().load_state(data)
        self.first_index = data.get("first_index", 0)
        self.engines = [LocalEngineLauncher.from_dict(engine, parent=self, stop_timeout=self.stop_timeout)
                        for engine in data.get("engines", [])]
        self.n = len(self.engines)


@hookimpl
def cluster_launcher_register_launchers():
    return [LocalControllerLauncher, LocalEngineSetLauncher]
