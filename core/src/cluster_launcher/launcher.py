"""Base classes of launcher plugins.

A launcher starts one role of a cluster: the controller
(:class:`ControllerLauncher`) or a set of engines (:class:`EngineSetLauncher`).
A launcher must be able to describe itself as a dict (:meth:`Launcher.to_dict`)
so that a later process (``cluster-launcher stop``, ``engines``, ``list``) can
rebuild it (:meth:`Launcher.from_dict`) and stop or poll what it started.

:class:`LocalProcessLauncher` runs one command as a local child process; the
SSH and MPI launchers subclass it (their command is ``ssh host …`` or
``mpiexec …``).  Batch-system launchers submit a job script instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, ClassVar

from traitlets import Dict, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable


def python_cmd(subcommand: str) -> list[str]:
    """The command line that runs ``cluster-launcher <subcommand>`` with this Python."""
    return [sys.executable, "-m", "cluster_launcher", subcommand]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it first if it is our exited child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Launcher(LoggingConfigurable):
    """Starts and stops one role of a cluster."""

    role: ClassVar[str] = ""  # "controller" or "engines"

    profile_dir = Unicode("", help="The profile directory of the cluster.").tag(config=False)
    cluster_id = Unicode("", help="The id of the cluster within its profile.").tag(config=False)
    environment = Dict(help="Extra environment variables for what the launcher starts.").tag(config=True)
    stop_timeout = Float(5.0, help="Seconds to wait after SIGTERM before SIGKILL.").tag(config=True)

    def start(self, n: int = 1) -> None:
        """Start the role (``n`` engines for an engine set); return once
        what it started is running or submitted, not when it is ready."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop everything this launcher started, by the PID or job id it recorded."""
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        raise NotImplementedError

    def poll(self) -> int | None:
        """``None`` while running, else an exit code."""
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    @property
    def cluster_args(self) -> list[str]:
        args = [f"--profile-dir={self.profile_dir}"] if self.profile_dir else []
        return args + ([f"--cluster-id={self.cluster_id}"] if self.cluster_id else [])

    def log_file(self, name: str) -> str:
        log_dir = os.path.join(self.profile_dir or ".", "log")
        os.makedirs(log_dir, exist_ok=True)
        return os.path.join(log_dir, f"{name}-{self.cluster_id or 'default'}.log")

    def to_dict(self) -> dict[str, Any]:
        """What a later process needs to stop or poll what this one started."""
        return {"class": f"{type(self).__module__}.{type(self).__name__}",
                "profile_dir": self.profile_dir, "cluster_id": self.cluster_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Launcher:
        launcher = cls(profile_dir=data.get("profile_dir", ""), cluster_id=data.get("cluster_id", ""), **kwargs)
        launcher.load_state(data)
        return launcher

    def load_state(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`to_dict` recorded beyond the profile and cluster id."""


class ControllerLauncher(Launcher):
    role: ClassVar[str] = "controller"

    controller_cmd = List(Unicode(), default_value=python_cmd("controller"),
                          help="Command that runs the controller.").tag(config=True)
    controller_args = List(Unicode(), help="Extra command-line arguments for the controller.").tag(config=True)

    @property
    def args(self) -> list[str]:
        return [*self.controller_cmd, *self.cluster_args, *self.controller_args]


class EngineSetLauncher(Launcher):
    role: ClassVar[str] = "engines"

    engine_cmd = List(Unicode(), default_value=python_cmd("engine"),
                      help="Command that runs one engine.").tag(config=True)
    engine_args = List(Unicode(), help="Extra command-line arguments for each engine.").tag(config=True)
    n = Integer(0, help="How many engines this set started.").tag(config=False)

    @property
    def args(self) -> list[str]:
        return [*self.engine_cmd, *self.cluster_args, *self.engine_args]


class LocalProcessLauncher(Launcher):
    """Runs ``self.args`` as a child process of this host, output to a log file,
    in its own session so a Ctrl-C at the terminal reaches only us."""

    log_name: ClassVar[str] = "process"
    pid = Integer(0).tag(config=False)

    @property
    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, n: int = 1) -> None:
        env = {**os.environ, **self.environment}
        with open(self.log_file(self.log_name), "ab") as log:
            self._process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self._process.pid
        self.log.debug("started %s (pid %s): %s", self.log_name, self.pid, " ".join(self.args))

    def poll(self) -> int | None:
        process = getattr(self, "_process", None)
        if process is not None:
            return process.poll()
        return None if self.pid and pid_alive(self.pid) else 0

    def signal(self, sig: int) -> None:
        if self.pid and self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.wait(self.stop_timeout) is None:
            self.signal(signal.SIGKILL)
            self.wait(self.stop_timeout)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "pid": self.pid}

    def load_state(self, data: dict[str, Any]) -> None:
        self.pid = data.get("pid", 0)
