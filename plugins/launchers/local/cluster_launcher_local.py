"""Start the controller and engines as processes on this host."""

from __future__ import annotations

from typing import Any

from cluster_launcher import hookimpl
from cluster_launcher.launcher import ControllerLauncher, EngineSetLauncher, LocalProcessLauncher


class LocalControllerLauncher(LocalProcessLauncher, ControllerLauncher):
    log_name = "controller"


class LocalEngineLauncher(LocalProcessLauncher, EngineSetLauncher):
    """One local engine process (a building block of LocalEngineSetLauncher)."""

    log_name = "engine"


class LocalEngineSetLauncher(EngineSetLauncher):
    """``n`` local engine processes, each logging to its own file."""

    def start(self, n: int = 1) -> None:
        self.engines = getattr(self, "engines", [])
        first = len(self.engines)
        for i in range(first, first + n):
            engine = LocalEngineLauncher(parent=self, profile_dir=self.profile_dir, cluster_id=self.cluster_id,
                                         engine_cmd=self.engine_cmd, engine_args=self.engine_args,
                                         environment=self.environment)
            engine.log_name = f"engine-{i}"
            engine.start()
            self.engines.append(engine)
        self.n = len(self.engines)

    def poll(self) -> int | None:
        codes = [engine.poll() for engine in getattr(self, "engines", [])]
        return None if any(code is None for code in codes) else max(codes, default=0)

    def signal(self, sig: int) -> None:
        for engine in getattr(self, "engines", []):
            engine.signal(sig)

    def stop(self) -> None:
        engines = getattr(self, "engines", [])
        for engine in engines:  # all at once, then wait: n engines stop in one stop_timeout
            engine.signal(15)
        for engine in engines:
            if engine.wait(self.stop_timeout) is None:
                engine.signal(9)
                engine.wait(self.stop_timeout)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pids": [e.pid for e in getattr(self, "engines", [])]}

    def load_state(self, data: dict[str, Any]) -> None:
        self.engines = [LocalEngineLauncher(parent=self, profile_dir=self.profile_dir, cluster_id=self.cluster_id,
                                            pid=pid) for pid in data.get("pids", [])]
        self.n = len(self.engines)


@hookimpl
def cluster_launcher_register_launchers():
    return [LocalControllerLauncher, LocalEngineSetLauncher]
